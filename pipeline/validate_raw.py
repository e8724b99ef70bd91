"""Stage `validate_raw`: Great Expectations gate on a fetched dataset before anything is built on it.

Images: per split, row counts, the label set (``validate.labels``, else the training labels; the test split
must hold exactly the same), one image size and channel count, finite pixels in 0-255, unique ids, and
every class at least ``validate.min_class_share`` of its split.
Text: row count, labels in the class set with every class present, no sentence without a word, unique
ids, split values.

Tables: row count, labels in the class set with every class present, unique ids, split values, every
input column present, missing values at most ``validate.max_missing_share`` of each column (none at all
when ``data.missing`` is ``fail``), numeric ``validate.ranges`` and categorical ``validate.categories``,
every class at least ``validate.min_class_share`` of the rows.

Regression (``data.task: regression``, every kind): instead of the class checks, a label in every row and,
where ``validate.label_range`` ([low, high]) is given, within it.

Row policies, each ``fail`` (the default: the gate fails, naming the rows) or ``drop`` (the rows are left
out before the checks, listed with their id and what was wrong in both reports and the model card, and
`prepare` leaves them out): images ``validate.rows_with_bad_pixels`` (a non-finite pixel or one outside
0-255) and ``validate.rows_with_unknown_label``; text ``validate.rows_without_words`` (e.g. an
emoticon-only SMS ``:-)``); tables ``validate.rows_out_of_range`` and ``validate.rows_with_unknown_category``.

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
    class_share_checks, class_share_frame, drop_rows, image_row_rules, label_text, raw_checks,
    raw_image_frame, raw_table_checks, raw_text_checks, raw_text_frame, run_checks, table_row_rules, text_row_rules,
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
    frame = pd.concat([raw_image_frame(arrays[f"{split}_images"], arrays[f"{split}_labels"], split,
                                       arrays.get(f"{split}_files")) for split in splits], ignore_index=True)
    if regression:  # a real-valued target, checked as a number
        frame["label"] = pd.to_numeric(frame["label"], errors="coerce")
    frame, dropped = drop_rows(frame, image_row_rules(frame, expected), settings, f"datasets.{dataset.name}.validate",
                               ids_per_split=True)
    batches = {}
    for split in splits:
        rows = frame[frame["split"] == split].reset_index(drop=True)
        low, high = settings["rows"].get(split, [1, None])
        batches[split] = (rows, raw_checks(expected, int(low), int(high) if high else None, height, width, channels,
                                           settings.get("label_range")))
        share = float(settings.get("min_class_share") or 0.0)
        if share > 0 and not regression:
            batches[f"{split} class shares"] = (class_share_frame(rows["label"]), class_share_checks(share))
    finish_gate(run_checks(batches, suite_name=f"raw_{dataset.name}"), report, html, f"validate_raw ({dataset.name})",
                dropped)


def text_gate(dataset: DatasetSettings, raw: Path, info: Path, report: Path, html: Path) -> None:
    settings = dataset.validate
    corpus = TextCorpus.read_frame(raw / "corpus.csv")
    frame = raw_text_frame(corpus)
    frame, dropped = drop_rows(frame, text_row_rules(frame, corpus["text"]), settings, f"datasets.{dataset.name}.validate")
    rows = settings["rows"]
    note = read_json(info)
    classes = None if note.get("task") == "regression" else len(note["class_names"])
    checks = raw_text_checks(classes, int(rows["min"]), int(rows["max"]), settings.get("label_range"))
    result = run_checks({dataset.name: (frame, checks)}, suite_name=f"raw_{dataset.name}")
    finish_gate(result, report, html, f"validate_raw ({dataset.name})", dropped)


def table_gate(dataset: DatasetSettings, raw: Path, info: Path, report: Path, html: Path) -> None:
    settings = dataset.validate
    table = RawTable.read_csv(raw / "table.csv", read_json(info))
    rows = settings["rows"]
    share = 0.0 if dataset.data.get("missing", "impute") == "fail" else float(settings.get("max_missing_share", 0.0))
    checks = raw_table_checks(None if table.regression else len(table.class_names), int(rows["min"]),
                              int(rows["max"]) if rows.get("max") else None, [*table.numeric, *table.categorical],
                              share, settings.get("ranges"), settings.get("categories"), settings.get("label_range"))
    rules = table_row_rules(table.frame, settings.get("ranges"), settings.get("categories"))
    frame, dropped = drop_rows(table.frame, rules, settings, f"datasets.{dataset.name}.validate")
    batches = {dataset.name: (frame, checks)}
    minimum = float(settings.get("min_class_share") or 0.0)
    if minimum > 0 and not table.regression:
        batches["class shares"] = (class_share_frame(frame["label_name"]), class_share_checks(minimum))
    finish_gate(run_checks(batches, suite_name=f"raw_{dataset.name}"), report, html, f"validate_raw ({dataset.name})",
                dropped)


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
