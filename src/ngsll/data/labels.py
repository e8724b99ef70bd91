"""Checks on label columns shared by every kind of dataset: class labels that look continuous are refused,
a regression target is parsed as finite numbers (rows named otherwise) and binned for stratified splits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ngsll.errors import DataSourceError

def label_text(label: Any) -> str | None:
    """A stored label or category as text (``3``, ``3.0`` and ``"3"`` alike), None for a missing one."""
    if label is None or (isinstance(label, (float, np.floating)) and np.isnan(label)):
        return None
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        return str(int(label))
    return str(label.item() if isinstance(label, np.generic) else label)


MAX_CLASSES = 100  # more distinct labels than this under a classification task: surely a continuous target


class LabelError(DataSourceError):
    """Labels that a classification task cannot take; the message names the column and what is accepted."""


def check_class_labels(labels: np.ndarray, where: str, max_classes: int = MAX_CLASSES) -> None:
    """Refuse labels that look like a continuous target under a classification task.

    Numeric labels (numbers, or strings that all parse as numbers) with a fractional part, or more than
    ``max_classes`` distinct values, raise :class:`LabelError` naming ``where`` and suggesting
    ``task: regression``.
    """
    values = np.asarray(labels)
    if values.dtype.kind in "USO":  # text (a CSV column arrives as Python strings): numeric if every value parses
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError):  # words: class names, never continuous
            values = np.asarray(labels)
    distinct = np.unique(values)
    fractional = values.dtype.kind == "f" and not np.all(np.isnan(values) | (values == np.round(values)))
    if fractional or len(distinct) > max_classes:
        reason = "values with a fractional part" if fractional else f"{len(distinct)} distinct values"
        raise LabelError(
            f"{where} holds {reason} (e.g. {', '.join(map(str, distinct[:5]))}): that looks like a continuous "
            f"target, not classes. Use task: regression for a real-valued target, or map the values to at most "
            f"{max_classes} classes"
        )


def numeric_target(values: Any, where: str) -> np.ndarray:
    """(N,) float64 values of a regression target column; raise :class:`LabelError` naming the rows of any
    value that is missing, not a number or not finite."""
    series = pd.Series(np.asarray(values, dtype=object))
    parsed = pd.to_numeric(series.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
    bad = ~np.isfinite(parsed.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise LabelError(f"{where} must hold a finite number in every row for task: regression; rows {rows} hold "
                         f"{[series.iloc[row] for row in rows]}")
    return parsed.to_numpy(dtype=np.float64)


def target_strata(values: np.ndarray, bins: int = 5) -> np.ndarray:
    """(N,) int64 quantile bin (0..bins-1) of each target value: the classes a regression split is stratified
    by, so train, validation and test see the same range of targets. Ties share a bin; fewer distinct
    values than ``bins`` give fewer bins."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))  # inner edges
    return np.searchsorted(edges, values, side="left").astype(np.int64)
