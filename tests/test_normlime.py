"""NormLIME on a hand-computed matrix, SP-LIME and mean |w| beside it, and exact shard merging."""

from __future__ import annotations

import numpy as np
import pytest

from ngsll import InputError
from ngsll.normlime import NormLIME

# Rows are local explanations; the last one uses no feature. gamma|w| = w^2 / ||w||_1 per row:
#   [2, 0, -2] (pred 0): [1, 0, 1];  [0, 3, 1] (pred 1): [0, 2.25, 0.25];  [1, 1, 0] (pred 1): [0.5, 0.5, 0]
WEIGHTS = np.array([[2.0, 0.0, -2.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
PREDICTED = np.array([0, 1, 1, 0])


def test_hand_computed_global_and_class_specific_scores() -> None:
    normlime = NormLIME(num_features=3, num_classes=2).update(WEIGHTS, PREDICTED)
    assert normlime.global_importance_ == pytest.approx([(1 + 0.5) / 2, (2.25 + 0.5) / 2, (1 + 0.25) / 2])
    assert normlime.class_importance_[0] == pytest.approx([1.0, 0.0, 1.0])  # feature 1 never used for class 0
    assert normlime.class_importance_[1] == pytest.approx([0.5, 1.375, 0.25])
    assert normlime.global_signed_ == pytest.approx([1.5, 2.0, -0.5])
    assert normlime.class_signed_[0] == pytest.approx([2.0, 0.0, -2.0])
    assert normlime.usage_.tolist() == [[1, 0, 1], [1, 2, 1]]
    assert normlime.sp_lime_ == pytest.approx(np.sqrt([5.0, 10.0, 5.0]))
    assert normlime.mean_abs_ == pytest.approx([0.75, 1.0, 0.75])


def test_matches_the_matrix_form_of_eq_5() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(40, 6)) * (rng.random((40, 6)) < 0.4)
    normlime = NormLIME(6, 3).update(weights, rng.integers(0, 3, size=40))
    used_rows = np.abs(weights).sum(axis=1) > 0
    matrix, v = weights[used_rows], np.abs(weights[used_rows]).sum(axis=1)
    for i in range(6):
        omega = matrix[:, i]
        expected = omega @ np.diag(1 / v) @ omega / max(np.count_nonzero(omega), 1)
        assert normlime.global_importance_[i] == pytest.approx(expected)


def test_features_never_used_score_zero() -> None:
    normlime = NormLIME(4, 2).update(np.array([[1.0, 0.0, 2.0, 0.0]]), np.array([1]))
    assert normlime.global_importance_[[1, 3]].tolist() == [0.0, 0.0]
    assert normlime.class_importance_[0].tolist() == [0.0] * 4


def test_merging_shards_equals_one_pass() -> None:
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(101, 5)) * (rng.random((101, 5)) < 0.5)
    predicted = rng.integers(0, 2, size=101)
    whole = NormLIME(5, 2).update(weights, predicted)
    shards = [NormLIME(5, 2).update(weights[s], predicted[s]) for s in (slice(0, 30), slice(30, 31), slice(31, 101))]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    for name in ("global_importance_", "class_importance_", "global_signed_", "sp_lime_", "mean_abs_", "usage_"):
        assert np.allclose(getattr(merged, name), getattr(whole, name), rtol=0, atol=1e-12), name


def test_empty_and_malformed_input_are_clear_errors() -> None:
    with pytest.raises(InputError, match="no explanations"):
        _ = NormLIME(3, 2).global_importance_
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        NormLIME(3, 2).update(np.ones((2, 4)), np.zeros(2, dtype=int))
    with pytest.raises(InputError, match="0..1"):
        NormLIME(3, 2).update(np.ones((2, 3)), np.array([0, 2]))
    with pytest.raises(InputError, match="same shape"):
        NormLIME(3, 2).merge(NormLIME(4, 2))
