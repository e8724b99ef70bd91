"""Broken user data through a real `dvc repro` of the pipeline in a temporary git repository: each stops the
first stage that can see it with one line naming the file, row or column, and leaves no half-written output.

Each case builds its own tiny repository (``pipeline_repo.make_repo``), so this module runs apart from
``test_pipeline.py``'s shared one (under ``pytest -n 2`` on another worker).
"""

from __future__ import annotations

import html
import json

import numpy as np
import pytest

from pipeline_repo import make_repo, run, tiny_params, write_applicants, write_sentences, write_shapes
from test_data import fake_mnist

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("breakage", "stage", "message"), [
    ("corrupt image", "fetch@shapes", "is not a readable PNG/JPEG image"),
    ("empty class", "fetch@shapes", "is empty; every class needs PNG/JPEG images"),
    ("grid", "fetch@shapes", "a grid of 5x5 cells does not fit images of 24x32 pixels"),
    ("continuous labels", "fetch@tiny", "looks like a continuous target, not classes. Use task: regression"),
])
def test_bad_input_stops_at_fetch_with_the_file_named_and_nothing_written(tmp_path, breakage, stage, message) -> None:
    shapes = write_shapes(tmp_path / "shapes", per_class=3)
    sentences = write_sentences(tmp_path / "reviews.csv")
    if breakage == "corrupt image":
        (shapes / "red" / "1.png").write_bytes(b"not a png")
    elif breakage == "empty class":
        (shapes / "violet").mkdir()
    elif breakage == "continuous labels":
        lines = sentences.read_text().splitlines()
        sentences.write_text("\n".join([lines[0]] + [f"{line.rsplit(',', 1)[0]},{i / 7:.3f}"
                                                      for i, line in enumerate(lines[1:])]) + "\n")
    params = tiny_params("npz", tmp_path / "missing.npz", sentences, shapes)
    if breakage == "grid":
        params["datasets"]["shapes"]["data"]["grid"] = [5, 5]
    repo = make_repo(tmp_path, params)
    result = run(["dvc", "repro", stage], repo, check=False)
    assert result.returncode != 0 and "fetch failed:" in result.stderr and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    dataset = stage.split("@")[1]
    assert not (repo / f"data/raw/{dataset}").exists() or not any((repo / f"data/raw/{dataset}").iterdir())
    assert not list(repo.rglob("*.partial"))


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [("nan", "column=nonfinite"), ("label", "column=label"), ("empty", "expect_table_row_count_to_be_between")],
)
def test_broken_data_stops_at_the_validation_stage(tmp_path, breakage: str, expected: str) -> None:
    arrays = {name: array.astype(np.float32) for name, array in fake_mnist(train=120, test=30).items()}
    if breakage == "nan":
        arrays["train_images"][7, 10, 10] = np.nan
    elif breakage == "label":
        arrays["test_labels"][3] = 11
    else:
        arrays["test_images"], arrays["test_labels"] = arrays["test_images"][:0], arrays["test_labels"][:0]
    np.savez(tmp_path / "mnist.npz", **arrays)
    repo = make_repo(tmp_path, tiny_params("npz", tmp_path / "mnist.npz", write_sentences(tmp_path / "reviews.csv")))
    result = run(["dvc", "repro", "prepare@mnist"], repo, check=False)
    assert result.returncode != 0
    assert "validate_raw (mnist) failed" in result.stderr and expected in result.stderr
    assert not (repo / "data/prepared").exists()
    assert not json.loads((repo / "reports/mnist/validation/raw.json").read_text())["success"]


def test_a_sentence_without_words_stops_the_text_path_at_its_gate(tmp_path) -> None:
    sentences = write_sentences(tmp_path / "reviews.csv", empty_row=True)
    repo = make_repo(tmp_path, tiny_params("npz", tmp_path / "missing.npz", sentences))
    result = run(["dvc", "repro", "evaluate@tiny"], repo, check=False)
    assert result.returncode != 0
    assert "validate_raw (tiny) failed" in result.stderr and "column=tokens" in result.stderr
    assert "in rows id=[60]" in result.stderr  # the failing row by id, not only its value (0 tokens)
    assert not (repo / "data/prepared/tiny").exists()


def test_the_drop_policy_leaves_wordless_sentences_out_and_lists_them(tmp_path) -> None:
    params = tiny_params("npz", tmp_path / "missing.npz", write_sentences(tmp_path / "reviews.csv", empty_row=True))
    params["datasets"]["tiny"]["validate"]["rows_without_words"] = "drop"
    repo = make_repo(tmp_path, params)
    result = run(["dvc", "repro", "validate_prepared@tiny"], repo)
    assert "dropped 1 row(s) (no word token): ids [60]" in result.stderr
    report = json.loads((repo / "reports/tiny/validation/raw.json").read_text())
    assert report["success"] and report["dropped"]["rows"] == [{"id": 60, "value": "?!", "reason": "no word token"}]
    assert "1 row(s) dropped" in (repo / "reports/tiny/validation/raw.html").read_text()
    ids = np.concatenate([np.load(repo / f"data/prepared/tiny/{split}.npz")["ids"]
                          for split in ("train", "validation", "test")])
    assert sorted(ids.tolist()) == list(range(60))  # every sentence but the dropped one


def test_the_drop_policies_leave_bad_images_out_and_list_them_per_split(tmp_path) -> None:
    arrays = {name: array.astype(np.float32) for name, array in fake_mnist(train=120, test=30).items()}
    arrays["train_images"][7, 10, 10] = np.nan
    arrays["test_labels"][3] = 11
    np.savez(tmp_path / "mnist.npz", **arrays)
    params = tiny_params("npz", tmp_path / "mnist.npz", write_sentences(tmp_path / "reviews.csv"))
    params["datasets"]["mnist"]["validate"] |= {"rows_with_bad_pixels": "drop", "rows_with_unknown_label": "drop"}
    repo = make_repo(tmp_path, params)
    result = run(["dvc", "repro", "validate_prepared@mnist"], repo)
    assert "dropped 2 row(s)" in result.stderr
    report = json.loads((repo / "reports/mnist/validation/raw.json").read_text())
    assert report["success"] and [(row["split"], row["id"], row["reason"]) for row in report["dropped"]["rows"]] == [
        ("train", 7, "pixels not finite or outside 0-255"), ("test", 3, report["dropped"]["rows"][1]["reason"])]
    assert "label missing or not one of" in report["dropped"]["rows"][1]["reason"]
    page = html.unescape((repo / "reports/mnist/validation/raw.html").read_text())
    assert "2 row(s) dropped" in page and "train id=7: 'train[7]'" in page and "test id=3: \"test[3]: label '11'\"" in page
    prepared = {split: np.load(repo / f"data/prepared/mnist/{split}.npz")["ids"].tolist()
                for split in ("train", "validation", "test")}
    assert sorted(prepared["train"] + prepared["validation"]) == [i for i in range(120) if i != 7]
    assert prepared["test"] == [i for i in range(30) if i != 3]


def test_the_drop_policy_leaves_a_table_row_out_of_range_out_and_lists_its_cell(tmp_path) -> None:
    applicants = write_applicants(tmp_path / "applicants.csv")
    lines = applicants.read_text().splitlines()
    lines[5] = ",".join(["150", *lines[5].split(",")[1:]])  # data row 4: age 150, outside validate.ranges
    applicants.write_text("\n".join(lines) + "\n")
    params = tiny_params("npz", tmp_path / "missing.npz", write_sentences(tmp_path / "reviews.csv"),
                         applicants=applicants)
    params["datasets"]["credit"]["validate"]["rows_out_of_range"] = "drop"
    repo = make_repo(tmp_path, params)
    run(["dvc", "repro", "validate_prepared@credit"], repo)
    report = json.loads((repo / "reports/credit/validation/raw.json").read_text())
    assert report["success"] and report["dropped"]["count"] == 1
    row = report["dropped"]["rows"][0]
    assert row["value"] == "age=150" and row["reason"] == "a number outside validate.ranges"
    ids = np.concatenate([np.load(repo / f"data/prepared/credit/{split}.npz")["ids"]
                          for split in ("train", "validation", "test")])
    assert row["id"] not in ids.tolist() and len(ids) == 119


@pytest.mark.parametrize(("breakage", "expected"), [
    ("age", ["validate_raw (credit) failed", "column=age"]),  # fetch reads it; the range gate refuses it
    ("label", ["fetch failed:", "column 'risk' has empty labels in rows [4]"]),  # the first stage that can see it
])
def test_a_broken_table_stops_at_the_first_stage_that_sees_it_naming_the_column(tmp_path, breakage: str,
                                                                                 expected: list[str]) -> None:
    """An age outside validate.ranges, or a row without its label (data row 4)."""
    applicants = write_applicants(tmp_path / "applicants.csv")
    lines = applicants.read_text().splitlines()
    cells = lines[5].split(",")  # age,amount,housing,job,risk of data row 4
    if breakage == "age":
        cells[0] = "150"
    else:
        cells[-1] = ""
    lines[5] = ",".join(cells)
    applicants.write_text("\n".join(lines) + "\n")
    params = tiny_params("npz", tmp_path / "missing.npz", write_sentences(tmp_path / "reviews.csv"),
                         applicants=applicants)
    repo = make_repo(tmp_path, params)
    result = run(["dvc", "repro", "prepare@credit"], repo, check=False)
    assert result.returncode != 0 and all(part in result.stderr for part in expected), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (repo / "data/prepared/credit").exists()
    assert not list(repo.rglob("*.partial"))
