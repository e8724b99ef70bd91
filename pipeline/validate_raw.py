"""Stage `validate_raw`: Great Expectations gate on a fetched dataset before anything is built on it.

Images: per split, row counts, the label set (``validate.labels``, else the training labels; the test split
must hold exactly the same), one image size and channel count, finite pixels in 0-255, unique ids, and
every class at least ``validate.min_class_share`` of its split.
Text: row count, labels in the class set with every class present, no sentence without a word, unique
ids, split values. Policy ``validate.rows_without_words``: ``fail`` (default) stops here on a sentence
without a single word token (e.g. an emoticon-only SMS ``:-)``); ``drop`` removes such rows before the
checks and lists them (id and text) in the reports, and `prepare` leaves them out.

Tables: row count, labels in the class set with every class present, unique ids, split values, every
input column present, missing values at most ``validate.max_missing_share`` of each column (none at all
when ``data.missing`` is ``fail``), numeric ``validate.ranges`` and categorical ``validate.categories``,
every class at least ``validate.min_class_share`` of the rows.

Regression (``data.task: regression``, every kind): instead of the class checks, a label in every row and,
where ``validate.label_range`` ([low, high]) is given, within it.

On failure: a short summary naming the failing rows by id, the full result as JSON and HTML, and a
non-zero exit that stops `dvc repro`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ngsll.config import DatasetSettings, dataset_settings
from ngsll.data.table import RawTable
from ngsll.data.text import TextCorpus
from ngsll.quality import (
    class_share_checks, class_share_frame, label_text, raw_checks, raw_image_frame, raw_table_checks, raw_text_checks,
    raw_text_frame, rows_to_drop, run_checks,
)
from stage_io import finish_gate, load_params, one_line_errors, read_json, setup_logging


def image_gate(dataset: DatasetSettings, raw: Path, report: Path, html: Path) -> None:
    settings = dataset.validate
    with np.load(raw / "images.npz") as stored:
        arrays = {name: stored[name] for name in stored.files}
    splits = [split for split in ("train", "test") if f"{split}_images" in arrays]
    train_images = arrays["train_images"]
    height, width = int(train_images.shape[1]), int(train_images.shape[2])
    channels = int(train_images.shape[3]) if train_images.ndim == 4 else 1
    labels = settings.get("labels")
    regression = dataset.data.get("task") == "regression"
    expected = None if regression else sorted({label_text(v) for v in (labels or arrays["train_labels"])} - {None})
    batches = {}
    for split in splits:
        frame = raw_image_frame(arrays[f"{split}_images"], arrays[f"{split}_labels"], split, arrays.get(f"{split}_files"))
        if regression:  # a real-valued target, checked as a number
            frame["label"] = pd.to_numeric(frame["label"], errors="coerce")
        low, high = settings["rows"].get(split, [1, None])
        batches[split] = (frame, raw_checks(expected, int(low), int(high) if high else None, height, width, channels,
                                            settings.get("label_range")))
        share = float(settings.get("min_class_share") or 0.0)
        if share > 0 and not regression:
            batches[f"{split} class shares"] = (class_share_frame(frame["label"]), class_share_checks(share))
    finish_gate(run_checks(batches, suite_name=f"raw_{dataset.name}"), report, html, f"validate_raw ({dataset.name})")


def text_gate(dataset: DatasetSettings, raw: Path, info: Path, report: Path, html: Path) -> None:
    settings = dataset.validate
    corpus = TextCorpus.read_frame(raw / "corpus.csv")
    frame = raw_text_frame(corpus)
    drop = rows_to_drop(frame, "tokens", 1, settings.get("rows_without_words", "fail"))
    dropped = {"policy": "rows_without_words: drop", "reason": "no word token", "count": len(drop),
               "rows": [{"id": int(i), "value": corpus["text"][row]} for row, i in zip(drop.index, drop["id"])]}
    rows = settings["rows"]
    note = read_json(info)
    classes = None if note.get("task") == "regression" else len(note["class_names"])
    checks = raw_text_checks(classes, int(rows["min"]), int(rows["max"]), settings.get("label_range"))
    result = run_checks({dataset.name: (frame.drop(index=drop.index), checks)}, suite_name=f"raw_{dataset.name}")
    finish_gate(result, report, html, f"validate_raw ({dataset.name})", dropped if len(drop) else None)


def table_gate(dataset: DatasetSettings, raw: Path, info: Path, report: Path, html: Path) -> None:
    settings = dataset.validate
    table = RawTable.read_csv(raw / "table.csv", read_json(info))
    rows = settings["rows"]
    share = 0.0 if dataset.data.get("missing", "impute") == "fail" else float(settings.get("max_missing_share", 0.0))
    checks = raw_table_checks(None if table.regression else len(table.class_names), int(rows["min"]),
                              int(rows["max"]) if rows.get("max") else None, [*table.numeric, *table.categorical],
                              share, settings.get("ranges"), settings.get("categories"), settings.get("label_range"))
    batches = {dataset.name: (table.frame, checks)}
    minimum = float(settings.get("min_class_share") or 0.0)
    if minimum > 0 and not table.regression:
        batches["class shares"] = (class_share_frame(table.frame["label_name"]), class_share_checks(minimum))
    finish_gate(run_checks(batches, suite_name=f"raw_{dataset.name}"), report, html, f"validate_raw ({dataset.name})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--raw", type=Path, required=True, help="fetch's raw folder")
    parser.add_argument("--info", type=Path, required=True, help="fetch's provenance JSON (text: class names; tables: schema)")
    parser.add_argument("--report", type=Path, required=True, help="validation result JSON")
    parser.add_argument("--html", type=Path, required=True, help="static HTML report")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    dataset = dataset_settings(load_params(args.params), args.dataset)
    if dataset.kind == "image":
        image_gate(dataset, args.raw, args.report, args.html)
    elif dataset.kind == "table":
        table_gate(dataset, args.raw, args.info, args.report, args.html)
    else:
        text_gate(dataset, args.raw, args.info, args.report, args.html)


if __name__ == "__main__":
    with one_line_errors("validate_raw"):
        main()
