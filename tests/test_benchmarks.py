"""Smoke test of the latency benchmark's code on tiny inputs (timings are printed, never asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_args
from ngsll import build_model

SPEC = importlib.util.spec_from_file_location("latency", Path(__file__).resolve().parents[1] / "benchmarks" / "latency.py")
latency = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(latency)


def test_latency_benchmark_runs_every_row_on_tiny_inputs() -> None:
    torch.manual_seed(0)
    models = {k: build_model(tiny_args(num_features=4, k=k)) for k in (1, 2)}
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 8, 8)).astype(np.float32)
    z = rng.random((6, 4)).astype(np.float32)
    rows = latency.ngsll_rows(models, x, z, samples=2, batch=4)
    assert set(rows) == {f"NGSLL, {g}, {n}" for g in ("one-pass top-K", "sequential K-step")
                         for n in ("1 sample", "batch 4 (per sample)")}
    pytest.importorskip("lime")
    rows |= latency.lime_rows(z, np.array([0, 1, 0, 1, 0, 1]), z, [1, 2], samples=1, num_samples=50, seed=0)
    text = latency.table(rows, [1, 2], reference="NGSLL, one-pass top-K, 1 sample")
    assert text.count("\n") == len(rows) + 1 and "LIME tabular (50 samples)" in text


@torch.inference_mode()
def test_sequential_and_one_pass_gates_explain_the_same_way() -> None:
    torch.manual_seed(1)
    model = build_model(tiny_args(num_features=4, k=2)).eval()
    x, z = torch.rand(5, 1, 8, 8), torch.rand(5, 4)
    dense = model.generator(x).view(5, 4, 1)
    one_pass = model(x, z).gate
    sequential = latency.sequential_argmax_gate(dense.pow(2).sum(-1), model.feature_mask(z), 2)
    assert torch.equal(one_pass, sequential)
