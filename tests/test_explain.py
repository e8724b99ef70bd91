"""Explanations: named features, sorted by |contribution|, adding up to the logit."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_args
from ngsll import build_model
from ngsll.evaluation import format_table, time_explanations
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
