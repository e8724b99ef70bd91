"""Your own table (CSV, TSV or Parquet) read into one shape: input columns, a label, an optional split.

:func:`read_table_source` reads the file, resolves which columns are numeric and which categorical
(declared in params, else inferred: a column whose every present value parses as a number is numeric,
anything else categorical; the inference is reported), maps the label column to classes and checks the
split column. Every problem raises :class:`TableDataError` naming the file, the column and what is
accepted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ngsll.data.labels import check_class_labels, label_text, numeric_target
from ngsll.data.text import decode_utf8
from ngsll.errors import DataSourceError

TABLE_FORMATS = ("csv", "tsv", "parquet")
TASKS = ("binary", "multiclass", "regression")
RESERVED = ("id", "label", "label_name", "split")  # columns of the normalised raw table


class TableDataError(DataSourceError):
    """A table is empty, lacks a declared column, has a bad label or split column, or cannot be parsed."""


@dataclass
class RawTable:
    """A table as fetched: ``frame`` holds ``id, label`` (class index; for regression the value),
    ``label_name``, ``split`` (``train``/``test`` or empty) and the input columns; ``numeric`` and
    ``categorical`` name those; ``inferred`` says how each undeclared column was classified; ``task`` is
    ``binary``, ``multiclass`` or ``regression`` (no ``class_names``)."""

    frame: pd.DataFrame
    numeric: list[str]
    categorical: list[str]
    class_names: list[str]
    label_column: str
    inferred: dict[str, str] = field(default_factory=dict)
    task: str = "multiclass"

    @property
    def regression(self) -> bool:
        """A real-valued target (``task: regression``): ``label`` holds the value, there are no classes."""
        return self.task == "regression"

    def schema(self) -> dict[str, Any]:
        """What the later stages read back from the fetch note."""
        return {"label_column": self.label_column, "numeric": self.numeric, "categorical": self.categorical,
                "class_names": self.class_names, "inferred": self.inferred, "task": self.task}

    @classmethod
    def read_csv(cls, path: str | Path, schema: dict[str, Any]) -> RawTable:
        """The normalised table :meth:`write_csv` wrote, typed by the fetch note's ``schema``."""
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        for column in schema["numeric"]:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        task = schema.get("task", "multiclass")
        frame["id"] = frame["id"].astype(np.int64)
        frame["label"] = frame["label"].astype(np.float64 if task == "regression" else np.int64)
        frame["split"] = frame["split"].fillna("")
        return cls(frame, list(schema["numeric"]), list(schema["categorical"]), list(schema["class_names"]),
                   schema["label_column"], dict(schema.get("inferred") or {}), task)

    def write_csv(self, path: str | Path) -> None:
        self.frame.to_csv(path, index=False)


def read_file(path: Path, file_format: str) -> pd.DataFrame:
    """The file as strings (CSV/TSV, empty cells missing) or as stored (Parquet)."""
    if file_format not in TABLE_FORMATS:
        raise TableDataError(f"unknown table format {file_format!r}; accepted: {list(TABLE_FORMATS)}")
    if not path.exists():
        raise TableDataError(f"{path} does not exist")
    data = path.read_bytes()
    if not data.strip():
        raise TableDataError(f"{path} is empty; expected a header row and one row per sample")
    try:
        if file_format == "parquet":
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            frame = pd.read_csv(io.StringIO(decode_utf8(data, path)), sep="\t" if file_format == "tsv" else ",",
                                dtype=str, keep_default_na=False, na_values=["", "NA", "NaN", "nan", "null"])
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise TableDataError(f"{path} could not be read as {file_format}: {error}") from error
    if frame.empty:
        raise TableDataError(f"{path} has a header but no rows")
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def _parses_as_numbers(values: pd.Series) -> bool:
    present = values.dropna()
    return len(present) > 0 and bool(pd.to_numeric(present, errors="coerce").notna().all())


def resolve_columns(frame: pd.DataFrame, path: Path, label: str, numeric: list[str] | None,
                    categorical: list[str] | None, split: str | None, ignore: list[str]) -> tuple[list, list, dict]:
    """(numeric, categorical, inferred): declared columns kept as declared, the rest inferred."""
    declared = {*(numeric or []), *(categorical or [])}
    both = sorted(set(numeric or []) & set(categorical or []))
    if both:
        raise TableDataError(f"columns {both} are declared both numeric and categorical")
    named = [label, *declared, *([split] if split else []), *ignore]
    absent = [column for column in named if column not in frame.columns]
    if absent:
        raise TableDataError(f"{path} has no column(s) {absent}; its columns are {list(frame.columns)}")
    clash = sorted(set(frame.columns) & set(RESERVED) - {label, split} - set(ignore))
    if clash:
        raise TableDataError(f"{path}: input columns may not be named {clash} (reserved); list them under ignore "
                             "or rename them")
    inferred: dict[str, str] = {}
    resolved_numeric, resolved_categorical = list(numeric or []), list(categorical or [])
    for column in frame.columns:
        if column in (label, split, *ignore) or column in declared:
            continue
        kind = "numeric" if _parses_as_numbers(frame[column]) else "categorical"
        inferred[column] = kind
        (resolved_numeric if kind == "numeric" else resolved_categorical).append(column)
    for column in resolved_numeric:
        values = frame[column]
        bad = values.notna() & pd.to_numeric(values, errors="coerce").isna()
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())[:5].tolist()
            raise TableDataError(f"{path}: numeric column {column!r} holds non-numbers in rows {rows} (e.g. "
                                 f"{values[bad].iloc[0]!r}); declare it under categorical or fix the rows")
    if not resolved_numeric and not resolved_categorical:
        raise TableDataError(f"{path} has no input column besides the label {label!r}")
    return resolved_numeric, resolved_categorical, inferred


def read_table_source(path: str | Path, data: dict[str, Any], where: str) -> RawTable:
    """Read a dataset's table as its ``data`` section describes it (``format``, ``label_column``,
    ``numeric`` / ``categorical`` (null: inferred), ``ignore``, ``split_column``, ``task``, ``class_names``)."""
    path = Path(path)
    file_format = data.get("format") or path.suffix.lstrip(".").lower()
    frame = read_file(path, file_format)
    label, split = data.get("label_column", "label"), data.get("split_column")
    task = data.get("task", "multiclass")
    if task not in TASKS:
        raise TableDataError(f"{where}.data.task must be one of {list(TASKS)} for tables, got {task!r}")
    numeric, categorical, inferred = resolve_columns(frame, path, label, data.get("numeric"), data.get("categorical"),
                                                     split, list(data.get("ignore") or []))
    raw_labels = frame[label]
    empty = raw_labels.isna() | (raw_labels.astype(str).str.strip() == "")
    if empty.any():
        raise TableDataError(f"{path}: column {label!r} has empty labels in rows {np.flatnonzero(empty.to_numpy())[:5].tolist()}")
    if task == "regression":
        values = numeric_target(raw_labels.to_numpy(), f"{path}: column {label!r}")
        out = pd.DataFrame({"id": np.arange(len(frame), dtype=np.int64), "label": values,
                            "label_name": [f"{value:g}" for value in values]})
        return _with_inputs(out, frame, path, split, numeric, categorical, [], label, inferred, task)
    labels = raw_labels.map(_label_text)
    check_class_labels(labels.to_numpy(), f"{path}: column {label!r}")
    values = sorted(labels.unique().tolist(), key=_label_order)
    names = [str(name) for name in data.get("class_names") or values]
    if len(names) != len(values):
        raise TableDataError(f"{where}.data.class_names lists {len(names)} names for the {len(values)} labels "
                             f"{values} of column {label!r}")
    if len(values) < 2 or (task == "binary") != (len(values) == 2):
        raise TableDataError(f"{path}: column {label!r} holds {len(values)} classes {values[:10]}; task {task!r} needs "
                             f"{'exactly two' if task == 'binary' else 'at least three'}")
    out = pd.DataFrame({"id": np.arange(len(frame), dtype=np.int64), "label": labels.map(values.index).astype(np.int64)})
    out["label_name"] = out["label"].map(dict(enumerate(names)))
    return _with_inputs(out, frame, path, split, numeric, categorical, names, label, inferred, task)


def _with_inputs(out: pd.DataFrame, frame: pd.DataFrame, path: Path, split: str | None, numeric: list[str],
                 categorical: list[str], names: list[str], label: str, inferred: dict[str, str], task: str) -> RawTable:
    """The normalised table: ``out`` (id, label, label_name) with the split and the typed input columns."""
    out["split"] = ""
    if split:
        split_values = frame[split].astype(str).str.strip().str.lower()
        bad = sorted(set(split_values) - {"train", "test"})
        if bad:
            raise TableDataError(f"{path}: column {split!r} must hold 'train' or 'test', got {bad[:5]}")
        out["split"] = split_values.to_numpy()
    for column in numeric:
        out[column] = pd.to_numeric(frame[column], errors="coerce").to_numpy()
    for column in categorical:
        out[column] = frame[column].map(lambda v: None if pd.isna(v) else _label_text(v)).to_numpy()
    return RawTable(out, numeric, categorical, names, label, inferred, task)


def _label_text(value: Any) -> str:
    """A present label or category as text, stripped (``2``, ``2.0`` and ``" 2"`` alike)."""
    return label_text(value).strip()


def _label_order(value: str) -> tuple[int, float | str]:
    """Numbers in numeric order (2 before 10), then words alphabetically."""
    try:
        return 0, float(value)
    except ValueError:
        return 1, value
