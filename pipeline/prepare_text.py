"""Stage `prepare_text`: seeded splits and both text representations, built on the training split only.

x = token ids (padding 0, unknown word 1), z = bag of words without stopwords and rare words; plus the
feature (word) and class names, the encoder to turn new sentences into (x, z), and the vocabulary sizes
next to the paper's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ngsll.config import dataset_settings
from ngsll.data.text import TextCorpus, split_indices
from ngsll.text import TextEncoder
from stage_io import load_params, log, read_json, require_passed, save_split, setup_logging, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under text.datasets in params.yaml")
    parser.add_argument("--raw", type=Path, required=True, help="normalised corpus (.csv) from fetch_text")
    parser.add_argument("--info", type=Path, required=True, help="fetch_text's provenance JSON (class names)")
    parser.add_argument("--checked", type=Path, required=True, help="validate_text's report (must have passed)")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for train/validation/test .npz")
    parser.add_argument("--vocabulary", type=Path, required=True, help="vocabulary-size metrics (JSON)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    require_passed(args.checked)
    params = load_params(args.params)
    data = dataset_settings(params, args.dataset).data

    dropped = [row["id"] for row in read_json(args.checked).get("dropped", {}).get("rows", [])]
    corpus = TextCorpus.read_csv(args.raw, read_json(args.info)["class_names"]).without(dropped)
    if dropped:
        log.info("left out %d row(s) the gate dropped: ids %s", len(dropped), dropped[:20])
    indices = split_indices(corpus, int(params["seed"]), float(data["validation_fraction"]),
                            float(data["test_fraction"]))
    texts = {name: [corpus.texts[i] for i in rows] for name, rows in indices.items()}
    encoder = TextEncoder.fit(
        texts["train"], stopwords=data["stopwords"], min_count=int(data["min_count"]),
        min_word_length=int(data["min_word_length"]), max_length=int(data["max_length"]), counts=bool(data["counts"]),
        min_length=max(int(w) for w in params["text"]["model"]["filter_widths"]),
        keep_words=list(data.get("keep_words") or []),
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, rows in indices.items():
        split = encoder.split(texts[name], corpus.labels[rows], corpus.ids[rows])
        save_split(args.out_dir / f"{name}.npz", split)
        sizes[name] = len(rows)
        empty = int((split.z.sum(axis=1) == 0).sum())
        log.info("%s: %d sentences, %d with no vocabulary word", name, len(rows), empty)
    write_json(args.out_dir / "encoder.json", encoder.to_dict())
    write_json(args.out_dir / "features.json", {
        "feature_names": encoder.vocabulary.words,
        "class_names": corpus.class_names,
        "sequence_vocabulary_size": len(encoder.sequences),
        "sequence_length": encoder.length,
        "representation": {"x": f"token ids (0 padding, 1 unknown), length {encoder.length}",
                           "z": "word counts" if encoder.counts else "word presence (bag of words)"},
    })
    write_json(args.vocabulary, {
        "vocabulary_size": len(encoder.vocabulary), "paper_vocabulary_size": data.get("paper_vocabulary_size"),
        "sequence_vocabulary_size": len(encoder.sequences), "sequence_length": encoder.length,
        "sentences": sizes,
    })
    log.info("vocabulary: %d words in z (paper: %s), %d tokens in x", len(encoder.vocabulary),
             data.get("paper_vocabulary_size"), len(encoder.sequences))


if __name__ == "__main__":
    main()
