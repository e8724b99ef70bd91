"""Stage `prepare`: the seeded splits and both representations of one dataset, plus its features.json.

Images: classes from the task (``data.task``, ``classes`` / ``class_names``), validation drawn from train by
seed, test from the source (or drawn), x = pixels / 255 as (C, H, W), z = the cell means of ``data.grid``
(per channel or of luminance); ``features.json`` holds the cell and class names and the image spec that
serving reads. Text: seeded stratified splits, x = token ids (padding 0, unknown word 1), z = bag of words
without stopwords and rare words, built on the training split only, plus the encoder for new sentences.
Tables: seeded stratified splits (or the split column's test rows), the encoder fitted on the training rows
(means and deviations, categories, missing indicators; ``data.missing``), x = numbers then category codes,
z = standardised numbers, indicators and one-hot categories, named ``age``, ``age is missing``,
``housing=own``. A regression target (``data.task: regression``; text and tables are split by its
quantile bins) is standardised over the training rows; its scale goes into features.json. The summary JSON holds the split sizes (and for text the vocabulary sizes next to the paper's).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from ngsll.config import DatasetSettings, dataset_settings
from ngsll.data.images import RawImages, image_splits
from ngsll.data.labels import target_strata
from ngsll.data.table import RawTable
from ngsll.data.text import TextCorpus, split_indices, stratified_splits
from ngsll.quality import dropped_ids
from ngsll.table import TableEncoder
from ngsll.target import TargetScale
from ngsll.text import TextEncoder
from stage_io import (
    atomic_output, load_params, log, one_line_errors, read_json, require_passed, save_split, setup_logging, write_json,
)


def training_targets(labels: np.ndarray, scale: TargetScale | None) -> np.ndarray:
    """(N,) what the models train on: class indices as they are, a regression target standardised."""
    return labels.astype(np.int64) if scale is None else scale.standardise(labels)


def target_features(scale: TargetScale | None) -> dict[str, Any]:
    """features.json's keys for a regression target (the task and its scale); none for classes."""
    return {} if scale is None else {"task": "regression", "target": scale.to_dict()}


def label_summary(labels: np.ndarray, class_names: list[str]) -> str:
    """Class shares of a split, or a regression target's mean and deviation (in its own units)."""
    if not class_names:
        return f"target mean {labels.mean():.4g}, std {labels.std():.4g}"
    shares = np.bincount(labels.astype(np.int64), minlength=len(class_names)) / len(labels)
    return f"class shares {np.round(shares, 3).tolist()}"


def left_out(checked: dict[str, Any], split: str | None = None) -> list[int]:
    """The ids the gate's report says it dropped (of one source ``split`` for images), logged."""
    ids = dropped_ids(checked, split)
    if ids:
        log.info("left out %d %srow(s) the gate dropped: ids %s", len(ids), f"{split} " if split else "", ids[:20])
    return ids


def prepare_images(dataset: DatasetSettings, params: dict[str, Any], raw: Path, checked: dict[str, Any],
                   out_dir: Path) -> dict[str, Any]:
    with np.load(raw / "images.npz") as stored:
        images = RawImages.from_arrays({name: stored[name] for name in stored.files})
    dropped = {split: left_out(checked, split) for split in images.images}
    splits, mapping, spec = image_splits(images, dataset.data, int(params["seed"]), f"datasets.{dataset.name}", dropped)
    with atomic_output(out_dir / "metadata.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "id", "source_label", "label"])
        for name, split in splits.items():
            save_split(out_dir / f"{name}.npz", split)
            writer.writerows(zip([name] * len(split.y), split.ids.tolist(), split.source_labels.tolist(), split.y.tolist()))
            labels = mapping.target.restore(split.y) if mapping.regression else split.y
            log.info("%s: %d images, %s", name, len(split.y), label_summary(labels, mapping.class_names))
    rows, cols = spec.grid
    values = "per channel" if spec.cell_values == "channels" and spec.channels == 3 else "of luminance" if spec.channels == 3 else ""
    write_json(out_dir / "features.json", {
        "kind": "image",
        "feature_names": spec.feature_names,
        "class_names": mapping.class_names,
        "classes": {name: [str(label) for label in members] for name, members in zip(mapping.class_names, mapping.members)},
        **target_features(mapping.target),
        "image": spec.to_dict(),
        "representation": {"x": f"pixels / 255, shape ({spec.channels}, {spec.height}, {spec.width})",
                           "z": f"{rows}x{cols} cell means {values}".strip()},
    })
    return {"samples": {name: len(split.y) for name, split in splits.items()}, "num_features": len(spec.feature_names),
            "num_classes": len(mapping.class_names)}


def prepare_text(dataset: DatasetSettings, raw: Path, info: Path, checked: dict[str, Any], out_dir: Path,
                 seed: int) -> dict[str, Any]:
    data = dataset.data
    corpus = TextCorpus.read_csv(raw / "corpus.csv", read_json(info)["class_names"]).without(left_out(checked))
    indices = split_indices(corpus, seed, float(data["validation_fraction"]), float(data["test_fraction"]))
    scale = TargetScale.fit(data.get("label_column", "label"), corpus.labels[indices["train"]]) \
        if corpus.regression else None
    texts = {name: [corpus.texts[i] for i in rows] for name, rows in indices.items()}
    encoder = TextEncoder.fit(
        texts["train"], stopwords=data["stopwords"], min_count=int(data["min_count"]),
        min_word_length=int(data["min_word_length"]), max_length=int(data["max_length"]), counts=bool(data["counts"]),
        min_length=max(int(w) for w in dataset.model["filter_widths"]), keep_words=list(data.get("keep_words") or []),
    )
    sizes = {}
    for name, rows in indices.items():
        split = encoder.split(texts[name], training_targets(corpus.labels[rows], scale), corpus.ids[rows])
        save_split(out_dir / f"{name}.npz", split)
        sizes[name] = len(rows)
        empty = int((split.z.sum(axis=1) == 0).sum())
        log.info("%s: %d sentences, %d with no vocabulary word", name, len(rows), empty)
    write_json(out_dir / "encoder.json", encoder.to_dict())
    write_json(out_dir / "features.json", {
        "kind": "text",
        "feature_names": encoder.vocabulary.words,
        "class_names": corpus.class_names,
        **target_features(scale),
        "sequence_vocabulary_size": len(encoder.sequences),
        "sequence_length": encoder.length,
        "representation": {"x": f"token ids (0 padding, 1 unknown), length {encoder.length}",
                           "z": "word counts" if encoder.counts else "word presence (bag of words)"},
    })
    log.info("vocabulary: %d words in z (paper: %s), %d tokens in x", len(encoder.vocabulary),
             data.get("paper_vocabulary_size"), len(encoder.sequences))
    return {"samples": sizes, "num_features": len(encoder.vocabulary), "num_classes": len(corpus.class_names),
            "vocabulary_size": len(encoder.vocabulary), "paper_vocabulary_size": data.get("paper_vocabulary_size"),
            "sequence_vocabulary_size": len(encoder.sequences), "sequence_length": encoder.length}


def prepare_table(dataset: DatasetSettings, raw: Path, info: Path, checked: dict[str, Any], out_dir: Path,
                  seed: int) -> dict[str, Any]:
    data, schema = dataset.data, read_json(info)
    table = RawTable.read_csv(raw / "table.csv", schema)
    frame = table.frame[~table.frame["id"].isin(left_out(checked))].reset_index(drop=True)
    official = frame["split"].to_numpy() if (frame["split"] != "").any() else None
    labels = frame["label"].to_numpy()
    indices = stratified_splits(target_strata(labels) if table.regression else labels, official, seed,
                                float(data["validation_fraction"]), float(data["test_fraction"]), what="rows")
    scale = TargetScale.fit(table.label_column, labels[indices["train"]]) if table.regression else None
    encoder = TableEncoder.fit(frame.iloc[indices["train"]], table.numeric, table.categorical,
                               policy=data.get("missing", "impute"), label=table.label_column)
    sizes, unseen = {}, {}
    for name, rows in indices.items():
        part = frame.iloc[rows]
        split = encoder.split(part, training_targets(labels[rows], scale), part["id"].to_numpy(np.int64))
        save_split(out_dir / f"{name}.npz", split)
        sizes[name] = len(rows)
        unseen[name] = {column: int((~part[column].isna() & ~part[column].isin(values)).sum())
                        for column, values in encoder.categories.items()}
        log.info("%s: %d rows, %s", name, len(rows), label_summary(labels[rows], table.class_names))
    for name, counts in unseen.items():
        if any(counts.values()):
            log.warning("%s: categories not seen in training (encoded as all-zero one-hots): %s", name,
                        {column: count for column, count in counts.items() if count})
    write_json(out_dir / "encoder.json", encoder.to_dict())
    write_json(out_dir / "features.json", {
        "kind": "table",
        "feature_names": encoder.feature_names,
        "class_names": table.class_names,
        **target_features(scale),
        "table": {"columns": encoder.columns, "numeric": table.numeric, "categorical": table.categorical,
                  "numeric_inputs": encoder.numeric_inputs, "category_sizes": encoder.category_sizes,
                  "label_column": table.label_column, "inferred": table.inferred},
        "representation": {"x": f"{encoder.numeric_inputs} numbers (standardised, missing flags), then "
                                f"{len(encoder.categories)} category codes (0: missing or unseen)",
                           "z": "standardised numbers, missing flags and one-hot categories"},
    })
    log.info("%d features in z: %d numeric, %d missing flags, %d one-hot categories", len(encoder.feature_names),
             len(encoder.numeric), len(encoder.missing), sum(encoder.category_sizes) - len(encoder.categories))
    return {"samples": sizes, "num_features": len(encoder.feature_names), "num_classes": len(table.class_names),
            "unseen_categories": unseen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--raw", type=Path, required=True, help="fetch's raw folder")
    parser.add_argument("--info", type=Path, required=True, help="fetch's provenance JSON")
    parser.add_argument("--checked", type=Path, required=True, help="validate_raw's report (must have passed)")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for train/validation/test .npz")
    parser.add_argument("--summary", type=Path, required=True, help="split and feature counts (JSON metrics)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    require_passed(args.checked)
    checked = read_json(args.checked)
    params = load_params(args.params)
    dataset = dataset_settings(params, args.dataset)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if dataset.kind == "image":
        summary = prepare_images(dataset, params, args.raw, checked, args.out_dir)
    elif dataset.kind == "table":
        summary = prepare_table(dataset, args.raw, args.info, checked, args.out_dir, int(params["seed"]))
    else:
        summary = prepare_text(dataset, args.raw, args.info, checked, args.out_dir, int(params["seed"]))
    write_json(args.summary, summary)


if __name__ == "__main__":
    with one_line_errors("prepare"):
        main()
