"""Both representations of a table row, fitted on the training split only.

* z (the simplified input, what the explanation is about): the standardised numeric columns (``age``),
  an indicator per numeric or categorical column that had missing values in training (``age is missing``),
  and one-hot categories (``housing=own``). A one-hot that is 0 carries no evidence, so the gate's
  zero-feature mask keeps it off; so does a numeric value exactly at the training mean (z = 0, no
  contribution either way).
* x (what the weight generator reads): the same leading numbers (standardised values, missing indicators)
  followed by one integer code per categorical column (0: missing or unknown, 1..V: the category), which
  the generator embeds.

Layout of both, in order: ``numeric`` columns, then ``missing`` indicators, then (z) the one-hots of each
categorical column / (x) one code per categorical column. :meth:`TableEncoder.check_record` validates one
JSON record (a request) and names the field that is wrong; :meth:`TableEncoder.encode` is batched per
column (no loop per row).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from ngsll.data.labels import label_text
from ngsll.errors import ConfigError, InputError

MISSING_POLICIES = ("impute", "fail")


class RecordError(InputError):
    """A table record that cannot be encoded: a missing or unknown column, a wrong type, an unseen category."""


@dataclass
class TableSplit:
    """One split of a table: x (N, numeric + categorical) float32, z (N, d) float32, y (N,) labels, ids (N,)
    and the rows themselves as JSON records (what a request would send)."""

    x: np.ndarray
    z: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    records: list[str] = field(default_factory=list)


@dataclass
class TableEncoder:
    """The fitted encoder (see the module docstring); stored as ``encoder.json`` of the prepared data.

    numeric: numeric column names with their training ``mean`` and ``std`` (a constant column: std 1).
    categories: categorical column -> its training categories (as strings, sorted), code i + 1 each.
    missing: columns that had missing values in training (each gets an ``is missing`` feature).
    policy: ``impute`` (a missing numeric becomes the mean, a missing category all-zero one-hots; the
    indicator says so) or ``fail`` (a missing value is refused).
    label: the label column, which a record may hold (ignored).
    """

    numeric: dict[str, dict[str, float]]
    categories: dict[str, list[str]]
    missing: list[str]
    policy: str = "impute"
    label: str | None = None  # the label column: a record may carry it (it is ignored)

    def __post_init__(self) -> None:
        if self.policy not in MISSING_POLICIES:
            raise ConfigError(f"the missing-value policy must be one of {MISSING_POLICIES}, got {self.policy!r}")

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str],
            policy: str = "impute", label: str | None = None) -> TableEncoder:
        """Fit on the training rows ``frame`` (numeric columns as numbers, categorical ones as anything)."""
        stats = {}
        for column in numeric:
            values = pd.to_numeric(frame[column], errors="coerce")
            mean, std = float(values.mean()), float(values.std(ddof=0))
            stats[column] = {"mean": mean if math.isfinite(mean) else 0.0,
                             "std": std if math.isfinite(std) and std > 0 else 1.0}
        categories = {column: sorted({label_text(v) for v in frame[column] if not _is_missing(v)})
                      for column in categorical}
        missing = [column for column in [*numeric, *categorical] if frame[column].map(_is_missing).any()]
        return cls(stats, categories, missing, policy, label)

    @property
    def columns(self) -> list[str]:
        """The input columns a record must hold, numeric first."""
        return [*self.numeric, *self.categories]

    @property
    def numeric_inputs(self) -> int:
        """Leading x (and z) columns that are numbers: standardised values and missing indicators."""
        return len(self.numeric) + len(self.missing)

    @property
    def category_sizes(self) -> list[int]:
        """Codes per categorical column of x: its categories plus code 0 (missing or unknown)."""
        return [len(values) + 1 for values in self.categories.values()]

    @property
    def feature_names(self) -> list[str]:
        """The d names of z: ``age``, ``age is missing``, ``housing=own``."""
        return [*self.numeric, *(f"{column} is missing" for column in self.missing),
                *(f"{column}={value}" for column, values in self.categories.items() for value in values)]

    def category_features(self) -> np.ndarray:
        """(sum of category_sizes,) the z index of each offset x code (-1 for code 0 of every column)."""
        lookup, start = [], self.numeric_inputs
        for values in self.categories.values():
            lookup += [-1, *range(start, start + len(values))]
            start += len(values)
        return np.asarray(lookup, dtype=np.int64)

    def check_record(self, record: Any) -> dict[str, Any]:
        """One JSON record as the encoder reads it; raise :class:`RecordError` naming the field that is wrong.

        Every input column must be present and no other (the label may be sent and is ignored); numbers are
        JSON numbers (or numeric strings), categories strings or numbers among the training categories;
        ``null`` is accepted only under the ``impute`` policy.
        """
        if not isinstance(record, dict):
            raise RecordError(f"a record must be a JSON object of the columns {self.columns}, got "
                              f"{type(record).__name__}")
        missing = [column for column in self.columns if column not in record]
        if missing:
            raise RecordError(f"the record lacks the column(s) {missing}; a record holds {self.columns}")
        checked: dict[str, Any] = {}
        for column, value in record.items():
            value = value.item() if isinstance(value, np.generic) else value  # a DataFrame's numpy scalars
            if column in self.numeric:
                checked[column] = self._number(column, value)
            elif column in self.categories:
                checked[column] = self._category(column, value)
            elif column != self.label:
                raise RecordError(f"unknown column {column!r}; a record holds {self.columns}")
        return checked

    def _refuse_missing(self, column: str) -> None:
        if self.policy != "impute":
            raise RecordError(f"column {column!r} is missing (null) and the missing-value policy is 'fail'")

    def _number(self, column: str, value: Any) -> float:
        if _is_missing(value):
            self._refuse_missing(column)
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise RecordError(f"column {column!r} must be a number, got {type(value).__name__} {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise RecordError(f"column {column!r} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise RecordError(f"column {column!r} must be a finite number, got {value!r}")
        return number

    def _category(self, column: str, value: Any) -> str | None:
        if _is_missing(value):
            self._refuse_missing(column)
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise RecordError(f"column {column!r} must be a category (a string), got {type(value).__name__}")
        category = label_text(value)
        if category not in self._index[column]:
            raise RecordError(f"column {column!r} has the unseen category {category!r}; seen in training: "
                              f"{self.categories[column]}")
        return category

    @cached_property
    def _index(self) -> dict[str, dict[str, int]]:
        return {column: {value: code + 1 for code, value in enumerate(values)}
                for column, values in self.categories.items()}

    def encode(self, frame: pd.DataFrame | Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(n, numeric_inputs + categorical) x and (n, d) z of n rows (a frame, or records that passed
        :meth:`check_record`). A category not seen in training becomes code 0 and all-zero one-hots."""
        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame.from_records(list(frame), columns=self.columns)
        n = len(frame)
        numbers = np.zeros((n, len(self.numeric)), dtype=np.float32)  # (n, numeric)
        for j, (column, stats) in enumerate(self.numeric.items()):
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)  # (n,)
            numbers[:, j] = np.nan_to_num((values - stats["mean"]) / stats["std"], nan=0.0)
        indicators = np.stack([frame[column].isna().to_numpy() for column in self.missing], axis=1).astype(np.float32) \
            if self.missing else np.zeros((n, 0), dtype=np.float32)  # (n, missing)
        codes = np.zeros((n, len(self.categories)), dtype=np.int64)  # (n, categorical)
        for j, (column, values) in enumerate(self.categories.items()):
            seen, distinct = pd.factorize(frame[column], use_na_sentinel=True)  # (n,) index into distinct, -1: missing
            # label_text once per distinct cell, not per row; a trailing 0 is the code of a missing cell (index -1)
            lookup = np.append(pd.Categorical([label_text(v) for v in distinct], categories=values).codes + 1, 0)
            codes[:, j] = lookup[seen]  # (n,) training code, 0 for an unseen or missing category
        one_hot = np.concatenate([np.eye(size, dtype=np.float32)[codes[:, j]][:, 1:]
                                  for j, size in enumerate(self.category_sizes)], axis=1) \
            if self.categories else np.zeros((n, 0), dtype=np.float32)  # (n, sum of categories)
        leading = np.concatenate([numbers, indicators], axis=1)  # (n, numeric_inputs)
        x = np.concatenate([leading, codes.astype(np.float32)], axis=1)  # (n, numeric_inputs + categorical)
        z = np.concatenate([leading, one_hot], axis=1)  # (n, d)
        return x, z

    def split(self, frame: pd.DataFrame, labels: np.ndarray, ids: np.ndarray) -> TableSplit:
        """A :class:`TableSplit` of the rows ``frame`` with their labels and ids."""
        x, z = self.encode(frame)
        records = [json.dumps(row, default=str) for row in frame_records(frame[self.columns])]
        return TableSplit(x=x, z=z, y=np.asarray(labels), ids=np.asarray(ids), records=records)

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categories": self.categories, "missing": self.missing,
                "policy": self.policy, "label": self.label}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TableEncoder:
        return cls(dict(values["numeric"]), dict(values["categories"]), list(values["missing"]),
                   values.get("policy", "impute"), values.get("label"))


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``frame`` as dicts, a missing cell (NaN, None, NA) as None."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA

