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


def test_selection_frequency_and_class_samples_by_hand() -> None:
    normlime = NormLIME(num_features=3, num_classes=2).update(WEIGHTS, PREDICTED)
    assert normlime.class_samples.tolist() == [2, 2]
    # class 0: rows [2, 0, -2] and [0, 0, 0] -> features 0 and 2 in one of two; class 1: 0 once, 1 twice, 2 once
    assert normlime.selection_frequency_.tolist() == [[0.5, 0.0, 0.5], [0.5, 1.0, 0.5]]


def test_the_sparse_form_a_server_answers_with_gives_the_dense_result() -> None:
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(30, 12)) * (rng.random((30, 12)) < 0.3)
    dense[3] = 0  # a sample without any weight
    predicted = rng.integers(0, 3, size=30)
    k = int((dense != 0).sum(axis=1).max())
    order = np.argsort(-np.abs(dense), axis=1, kind="stable")[:, :k]  # (30, k) the largest |w| first
    weights = np.take_along_axis(dense, order, axis=1)
    indices = np.where(weights != 0, order, -1)  # padded as the v2 tensors are
    sparse = NormLIME(12, 3).update_sparse(indices, np.where(indices >= 0, weights, 0), predicted)
    reference = NormLIME(12, 3).update(dense, predicted)
    for name in NormLIME.STATE:
        assert np.allclose(getattr(sparse, name), getattr(reference, name)), name
    assert sparse.samples == reference.samples == 30
    with pytest.raises(InputError, match="0..11"):
        NormLIME(12, 3).update_sparse(np.full((1, 2), 12), np.ones((1, 2)), np.zeros(1, dtype=int))


def test_state_round_trips_through_plain_json_and_merges_with_class_samples() -> None:
    import json

    first = NormLIME(3, 2).update(WEIGHTS[:2], PREDICTED[:2])
    second = NormLIME(3, 2).update(WEIGHTS[2:], PREDICTED[2:])
    rebuilt = NormLIME.from_dict(json.loads(json.dumps(first.to_dict()))).merge(second)
    whole = NormLIME(3, 2).update(WEIGHTS, PREDICTED)
    assert rebuilt.class_samples.tolist() == whole.class_samples.tolist() == [2, 2]
    assert rebuilt.global_importance_ == pytest.approx(whole.global_importance_)
    with pytest.raises(InputError, match="shape"):
        NormLIME.from_dict({**first.to_dict(), "count": [[1, 2]]})
