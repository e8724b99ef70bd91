"""Text corpora: the TREC/MR layouts, the user's tables, splits, and errors that say what was wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ngsll.data.text import TREC_CLASS_NAMES, TextCorpus, TextDataError, read_corpus, split_indices
from ngsll.errors import DataSourceError
from ngsll.quality import raw_text_checks, raw_text_frame, run_checks


def write_trec(path: Path, rows: int = 5460) -> Path:
    labels = np.arange(rows) % 6
    pd.DataFrame({"label-coarse": labels, "label-fine": labels, "text": [f"What is thing {i} ?" for i in range(rows)]}
                 ).to_csv(path)
    return path


def test_trec_keeps_the_official_split_and_coarse_classes(tmp_path) -> None:
    corpus = read_corpus(write_trec(tmp_path / "trec.csv"), "trec")
    assert corpus.class_names == TREC_CLASS_NAMES
    assert (corpus.official_split[:5452] == "train").all() and (corpus.official_split[5452:] == "test").all()
    splits = split_indices(corpus, seed=0, validation_fraction=0.1)
    assert set(splits["test"]) == set(range(5452, 5460))  # the official test rows, untouched
    assert not set(splits["validation"]) & set(splits["train"])
    assert len(splits["train"]) + len(splits["validation"]) == 5452


def test_movie_reviews_label_by_id_range_and_drop_extra_snippets(tmp_path) -> None:
    path = tmp_path / "mr.txt"
    lines = ["id\tsentiment\ttext", "1\t2.1\tA ''gem'' of a film.", "5152\t1.0\tFine.", "5153\t-1.5\tDull.",
             "10312\t-0.9\tToo dry.", "10313\t1.2\tAn extra snippet."]
    path.write_bytes(("\r\n".join(lines)).encode())
    corpus = read_corpus(path, "mr")
    assert corpus.ids.tolist() == [1, 5152, 5153, 10312]
    assert corpus.labels.tolist() == [1, 1, 0, 0]
    assert corpus.texts[0] == "A ''gem'' of a film." and corpus.official_split is None


def test_user_tables_in_csv_tsv_and_parquet(tmp_path) -> None:
    frame = pd.DataFrame({"sentence": ["good", "bad", "fine", "awful"], "stars": ["pos", "neg", "pos", "neg"],
                          "part": ["train", "train", "train", "test"]})
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_csv(tmp_path / "a.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "a.parquet")
    for name, file_format in (("a.csv", "csv"), ("a.tsv", "tsv"), ("a.parquet", "parquet")):
        corpus = read_corpus(tmp_path / name, file_format, text_column="sentence", label_column="stars",
                             split_column="part")
        assert corpus.class_names == ["neg", "pos"] and corpus.labels.tolist() == [1, 0, 1, 0]
        assert corpus.official_split.tolist() == ["train", "train", "train", "test"]
    ordered = read_corpus(tmp_path / "a.csv", "csv", "sentence", "stars", class_names=["pos", "neg"])
    assert ordered.labels.tolist() == [0, 1, 0, 1]
    restored = TextCorpus.from_frame(corpus.frame(), corpus.class_names)
    assert restored.texts == corpus.texts and restored.labels.tolist() == corpus.labels.tolist()


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (b"", {}, r"empty\.csv is empty; expected a table"),
        (b"text,label\n", {}, "has a header but no rows"),
        (b"sentence,label\nhi,a\nho,b\n", {}, r"has no column 'text'; its columns are \['sentence', 'label'\]"),
        (b"text,stars\nhi,a\nho,b\n", {}, "has no column 'label'"),
        (b"text,label\nhi,a\nho,a\n", {}, r"column 'label' holds a single class \['a'\]"),
        (b"text,label\nhi,a\nh\xe9,b\n", {}, r"byte \d+ \(b'\\xe9'\) is not UTF-8"),
        (b"text,label\nhi,a\nho,c\n", {"class_names": ["a", "b"]}, r"labels \['c'\] outside the classes"),
    ],
)
def test_bad_tables_name_the_file_the_column_and_what_was_expected(tmp_path, content, kwargs, message) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(TextDataError, match=message) as raised:
        read_corpus(path, "csv", **kwargs)
    assert isinstance(raised.value, DataSourceError) and str(path) in str(raised.value)


def test_unknown_format_and_missing_file_are_named(tmp_path) -> None:
    with pytest.raises(TextDataError, match="unknown text format 'xlsx'"):
        read_corpus(tmp_path / "a.xlsx", "xlsx")
    with pytest.raises(TextDataError, match="does not exist"):
        read_corpus(tmp_path / "missing.csv", "csv")


def test_splits_are_stratified_disjoint_and_differ_by_seed() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    corpus = TextCorpus([f"s{i}" for i in range(100)], labels, ["a", "b"], np.arange(100))
    first = split_indices(corpus, seed=0)
    assert {name: len(rows) for name, rows in first.items()} == {"train": 80, "validation": 10, "test": 10}
    assert labels[first["test"]].sum() == 2 and labels[first["validation"]].sum() == 2  # stratified
    assert len(np.unique(np.concatenate(list(first.values())))) == 100
    assert not np.array_equal(first["test"], split_indices(corpus, seed=1)["test"])
    with pytest.raises(TextDataError, match="must lie in"):
        split_indices(corpus, seed=0, validation_fraction=0.6, test_fraction=0.5)


@pytest.mark.slow
def test_text_gate_rejects_empty_sentences_and_missing_classes() -> None:
    corpus = pd.DataFrame({"id": [0, 1, 2], "text": ["Good film", "?!", "Bad film"], "label": [1, 1, 1],
                           "split": ["", "", ""]})
    report = run_checks({"tiny": (raw_text_frame(corpus), raw_text_checks(2, 1, 10))}, suite_name="t")
    failed = {failure["expectation"] for failure in report.failures}
    assert failed == {"expect_column_values_to_be_between", "expect_column_distinct_values_to_contain_set"}
