"""Explanations: named features, sorted by |contribution|, adding up to the logit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_args
from ngsll import build_model
from ngsll.errors import InputError
from ngsll.evaluation import format_table, model_logits, roc_auc, time_explanations
from ngsll.explain import explanation_records, sparse_explanation

NAMES = [f"f{j}" for j in range(6)]


@pytest.mark.parametrize("overrides", [dict(task="binary"), dict(task="multiclass", num_classes=3)])
def test_records_are_sorted_named_and_add_up_to_the_answered_logit(overrides, tiny_batch) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_args(**overrides)).eval()
    x, z = tiny_batch
    output = model(x, z)
    explanation = sparse_explanation(output, z, model.args.k, model.args.task)
    records = explanation_records(explanation, NAMES)
    for row, features in enumerate(records):
        assert len(features) == min(3, int((z[row] != 0).sum()))
        magnitudes = [abs(f["contribution"]) for f in features]
        assert magnitudes == sorted(magnitudes, reverse=True)
        answered = int(explanation.class_index[row])
        assert sum(f["contribution"] for f in features) == pytest.approx(output.logits[row, answered].item(), abs=1e-5)
        for f in features:
            assert f["feature"] == NAMES[f["index"]]
            assert f["contribution"] == pytest.approx(f["value"] * f["weight"], abs=1e-6)
    if model.args.task == "multiclass":
        assert torch.equal(explanation.class_index, output.logits.argmax(-1))


def test_timing_reports_positive_milliseconds(tiny_model, tiny_batch) -> None:
    x, z = tiny_batch
    timing = time_explanations(tiny_model, x, z, batch_size=2, single_samples=3, warmup=1)
    assert set(timing) == {"ms_per_sample_batched", "ms_per_sample_single", "ms_per_sample_single_std"}
    assert all(value > 0 for key, value in timing.items() if key != "ms_per_sample_single_std")


def test_table_has_a_row_per_model_and_repeats_constant_models() -> None:
    table = format_table({"NGSLL": {1: 0.99, 5: 0.995}, "DNN": {0: 0.992}}, [1, 5], title="acc")
    lines = table.splitlines()
    assert lines[0] == "| acc | K = 1 | K = 5 |"
    assert lines[2] == "| NGSLL | 0.990 | 0.995 |" and lines[3] == "| DNN | 0.992 | 0.992 |"


def test_roc_auc_is_the_share_of_positive_negative_pairs_ranked_right() -> None:
    y = np.array([0, 0, 1, 1])
    scores = np.array([[0.1], [0.4], [0.35], [0.8]])  # pairs: 0.35 > 0.1, 0.35 < 0.4, 0.8 > both: 3 of 4
    assert roc_auc(y, scores, "binary") == pytest.approx(0.75)
    probabilities = np.column_stack([1 - scores[:, 0], scores[:, 0]])  # (N, 2): column 1 is the positive class
    assert roc_auc(y, probabilities, "binary", probabilities=True) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 1, 1, 1]), scores, "binary") is None  # one class only: undefined
    with pytest.raises(InputError, match="classification task"):
        roc_auc(y, scores, "regression")


def test_multiclass_roc_auc_is_the_one_versus_rest_mean_of_softmaxed_logits() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    logits = np.eye(3)[y] * 4.0  # every row's own class highest: each class ranks its rows first
    assert roc_auc(y, logits, "multiclass") == pytest.approx(1.0)
    logits[0] = [0.0, 4.0, 0.0]  # a class-0 row now looks like class 1: classes 0 and 1 lose pairs
    assert roc_auc(y, logits, "multiclass") < 1.0


def test_model_logits_are_the_batched_forward_pass_in_evaluation_mode(tiny_model, tiny_batch) -> None:
    x, z = tiny_batch
    tiny_model.train()
    logits = model_logits(tiny_model, x, z, batch_size=2)  # (5, 1) in three batches
    assert tiny_model.training  # restored
    with torch.inference_mode():
        expected = tiny_model.eval()(x, z).logits.numpy()
    assert logits.shape == (5, 1) and np.allclose(logits, expected, atol=1e-6)
