"""Great Expectations gates: the real GX run on hand-made tables, passing and failing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ngsll.errors import ConfigError
from ngsll.quality import (
    RowRule, class_share_checks, class_share_frame, disjoint_checks, drop_rows, dropped_ids, image_row_rules,
    label_checks, listed_ids, prepared_checks, prepared_frame, raw_checks, raw_image_frame, run_checks,
    table_row_rules,
)

pytest.importorskip("great_expectations")


def good_images(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8), np.arange(n) % 10


def checks(min_rows: int = 1) -> list:
    return raw_checks(labels=[str(label) for label in range(10)], min_rows=min_rows, max_rows=100, height=28, width=28,
                      channels=1)


def test_raw_frame_summarises_each_image() -> None:
    images = np.zeros((2, 28, 28), dtype=np.float32)
    images[0, 3, 4] = 200.0
    images[1, 0, 0] = np.nan
    frame = raw_image_frame(images, np.array([3, 7]), "train")
    assert frame["pixel_max"].tolist() == [200.0, 0.0]
    assert frame["nonfinite"].tolist() == [0, 1]
    assert frame[["height", "width"]].iloc[0].tolist() == [28, 28]


def test_good_raw_data_passes() -> None:
    report = run_checks({"train": (raw_image_frame(*good_images(), "train"), checks())}, "raw")
    assert report.success, report.summary()
    assert "expectations passed" in report.summary()


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [("nan", "column=nonfinite"), ("label", "column=label"), ("pixel", "column=pixel_max"),
     ("empty", "expect_table_row_count_to_be_between"), ("missing class", "expect_column_distinct_values_to_contain_set"),
     ("rgb", "column=channels")],
)
def test_broken_raw_data_fails_with_a_readable_summary(breakage: str, expected: str) -> None:
    images, labels = good_images()
    images = images.astype(np.float32)
    if breakage == "nan":
        images[2, 5, 5] = np.nan
    elif breakage == "label":
        labels = labels.copy()
        labels[1] = 11
    elif breakage == "pixel":
        images[0, 0, 0] = 300.0
    elif breakage == "missing class":  # e.g. a test split without one of training's classes
        labels = np.where(labels == 9, 8, labels)
    elif breakage == "rgb":
        images = np.repeat(images[..., None], 3, axis=-1)
    else:
        images, labels = images[:0], labels[:0]
    report = run_checks({"train": (raw_image_frame(images, labels, "train"), checks())}, "raw")
    assert not report.success
    assert expected in report.summary()
    assert "FAILED" in report.to_html("raw")


def test_prepared_gates_catch_inconsistent_masks_imbalance_and_overlap() -> None:
    z = np.array([[0.0, 0.5], [0.2, 0.0], [0.3, 0.1], [0.0, 0.0]])
    mask = z == 0
    y, ids = np.array([0, 1, 0, 1]), np.arange(4)
    check_list = prepared_checks(num_features=2, class_share=0.5, tolerance=0.1, num_classes=2)
    assert run_checks({"ok": (prepared_frame(z, mask, y, ids, "train"), check_list)}, "p").success

    bad_mask = mask.copy()
    bad_mask[2, 0] = True  # masks a feature that has evidence
    imbalanced = np.array([1, 1, 1, 1])
    overlap = np.concatenate([ids, ids[:1]])
    batches = {
        "mask": (prepared_frame(z, bad_mask, y, ids, "train"), check_list),
        "balance": (prepared_frame(z, mask, imbalanced, ids, "train"), check_list),
        "overlap": (prepared_frame(np.vstack([z, z[:1]]), np.vstack([mask, mask[:1]]), np.append(y, 0), overlap, "t"),
                    disjoint_checks()),
    }
    report = run_checks(batches, "p")
    failed = {(f["batch"], f["expectation"]) for f in report.failures}
    assert failed == {
        ("mask", "expect_column_values_to_be_in_set"),
        ("balance", "expect_column_mean_to_be_between"),
        ("overlap", "expect_column_values_to_be_unique"),
    }


def test_a_class_with_too_small_a_share_fails_its_gate() -> None:
    labels = pd.Series(["cat"] * 99 + ["dog"])
    frame = class_share_frame(labels)
    assert dict(zip(frame["label"], frame["share"])) == {"cat": 0.99, "dog": 0.01}
    assert run_checks({"shares": (frame, class_share_checks(0.005))}, "shares").success
    report = run_checks({"shares": (frame, class_share_checks(0.05))}, "shares")
    assert not report.success and "column=share" in report.summary()


def test_the_same_data_gives_a_byte_identical_report() -> None:
    """GX stamps each run with random ids and clocks; the stored report drops them, so re-running a gate on
    unchanged data leaves its report (a dependency of training in dvc.yaml) unchanged."""
    batch = {"train": (raw_image_frame(*good_images(), "train"), checks())}
    first, second = (json.dumps(run_checks(batch, "raw").results, sort_keys=True) for _ in range(2))
    assert first == second
    assert "validation_time" not in first and "ge_load_time" not in first


def test_a_regression_target_is_checked_for_presence_and_range_not_classes() -> None:
    frame = pd.DataFrame({"id": range(4), "label": [0.5, 12.25, -3.0, 7.0]})
    assert run_checks({"ok": (frame, label_checks(None, [-5.0, None]))}, "r").success  # no class set to match
    bad = frame.assign(label=[0.5, np.nan, -30.0, 7.0])
    report = run_checks({"bad": (bad, label_checks(None, [-5.0, 20.0]))}, "r")
    assert {f["expectation"] for f in report.failures} == {"expect_column_values_to_not_be_null",
                                                           "expect_column_values_to_be_between"}
    assert "id=[2]" in report.summary()  # the out-of-range row, named
    with pytest.raises(ConfigError, match=r"\[low, high\]"):
        label_checks(None, [1.0])
    z = np.array([[0.5, 0.0], [0.2, 0.1]])
    prepared = prepared_checks(num_features=2, class_share=None, tolerance=0.0, num_classes=None)
    assert run_checks({"p": (prepared_frame(z, z == 0, np.array([-1.3, 0.7]), np.arange(2), "train"), prepared)},
                      "p").success
    classes = prepared_checks(num_features=2, class_share=None, tolerance=0.0, num_classes=2)
    assert not run_checks({"p": (prepared_frame(z, z == 0, np.array([-1.3, 0.7]), np.arange(2), "train"), classes)},
                          "p").success


def test_drop_rows_keeps_every_row_under_fail_and_drops_exactly_the_breaking_ones_under_drop() -> None:
    frame = pd.DataFrame({"id": [10, 11, 12, 13], "tokens": [3, 0, 2, 0], "label": [0, 1, 9, 1]})
    rules = [RowRule("rows_without_words", "no word token", frame["tokens"].to_numpy() < 1, ["a", ":-)", "b", "?!"]),
             RowRule("rows_with_bad_label", "label 9", (frame["label"] == 9).to_numpy(), ["a", ":-)", "b", "?!"])]
    kept, report = drop_rows(frame, rules, {})  # fail is the default: the gate's expectation sees them
    assert kept is frame and report is None
    kept, report = drop_rows(frame, rules, {"rows_without_words": "drop"})
    assert kept["id"].tolist() == [10, 12]
    assert report == {"policy": "rows_without_words: drop", "reason": "no word token", "count": 2,
                      "rows": [{"id": 11, "value": ":-)", "reason": "no word token"},
                               {"id": 13, "value": "?!", "reason": "no word token"}]}
    both = [rules[0], RowRule("rows_short", "short", np.array([False, True, True, False]), ["", "x", "y", ""])]
    kept, report = drop_rows(frame, both, {"rows_without_words": "drop", "rows_short": "drop"})
    assert kept["id"].tolist() == [10] and report["count"] == 3  # row 11 breaks both: listed once, first rule
    assert [(row["id"], row["reason"]) for row in report["rows"]] == [(11, "no word token"), (13, "no word token"),
                                                                       (12, "short")]
    with pytest.raises(ConfigError, match=r"datasets.sms.validate.rows_without_words must be one of \['fail', 'drop'\]"):
        drop_rows(frame, rules, {"rows_without_words": "skip"}, "datasets.sms.validate")


def test_image_rules_flag_bad_pixels_and_unknown_labels_per_split_and_the_card_lists_them() -> None:
    images, labels = good_images(6)
    images = images.astype(np.float32)
    images[1, 2, 2], images[3, 0, 0] = np.nan, 300.0
    labels = labels.copy()
    labels[4] = 11
    frame = pd.concat([raw_image_frame(images, labels, "train", np.array([f"f{i}.png" for i in range(6)])),
                       raw_image_frame(*good_images(3), "test")], ignore_index=True)
    rules = image_row_rules(frame, [str(label) for label in range(10)])
    assert [rule.key for rule in rules] == ["rows_with_bad_pixels", "rows_with_unknown_label"]
    policies = {"rows_with_bad_pixels": "drop", "rows_with_unknown_label": "drop"}
    kept, report = drop_rows(frame, rules, policies, ids_per_split=True)
    assert [(row["split"], row["id"], row["value"]) for row in report["rows"]] == [
        ("train", 1, "f1.png"), ("train", 3, "f3.png"), ("train", 4, "f4.png: label '11'")]
    assert len(kept) == 6 and dropped_ids({"dropped": report}, "train") == [1, 3, 4]
    assert dropped_ids({"dropped": report}, "test") == [] and dropped_ids({}) == []
    left = raw_checks(labels=["0", "2", "5"], min_rows=1, max_rows=10, height=28, width=28, channels=1)
    assert run_checks({"train": (kept[kept["split"] == "train"], left)}, "raw").success  # nothing bad remains
    assert listed_ids(report) == "train:1, train:3, train:4" and listed_ids(report, limit=1) == "train:1 and 2 more"
    assert image_row_rules(frame, None)[0].key == "rows_with_bad_pixels" and len(image_row_rules(frame, None)) == 1


def test_table_rules_name_the_offending_cells_and_leave_missing_cells_to_their_tolerance() -> None:
    frame = pd.DataFrame({"id": [0, 1, 2, 3], "age": [30.0, 150.0, np.nan, 17.0], "job": ["a", "b", "z", None]})
    out_of_range, unknown = table_row_rules(frame, {"age": [18, 100]}, {"job": ["a", "b"]})
    assert out_of_range.bad.tolist() == [False, True, False, True]  # the missing age is not out of range
    assert unknown.bad.tolist() == [False, False, True, False]  # nor the missing job an unknown category
    kept, report = drop_rows(frame, [out_of_range, unknown], {"rows_out_of_range": "drop",
                                                            "rows_with_unknown_category": "drop"})
    assert kept["id"].tolist() == [0]
    assert [row["value"] for row in report["rows"]] == ["age=150.0", "age=17.0", "job=z"]
    assert listed_ids(report) == "1, 3, 2"
    open_ended = table_row_rules(frame, {"age": [None, 100]}, None)[0]
    assert open_ended.bad.tolist() == [False, True, False, False]
