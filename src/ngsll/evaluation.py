"""Accuracy tables in the shape of the paper's Table 1 and per-sample explanation timings."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from ngsll.explain import sparse_explanation
from ngsll.model import NGSLL


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_explanations(
    model: NGSLL,
    x: torch.Tensor,
    z: torch.Tensor,
    batch_size: int = 256,
    single_samples: int = 200,
    warmup: int = 3,
) -> dict[str, float]:
    """Mean milliseconds per sample to produce a prediction **with** its top-K weights.

    Batched: all of ``x``/``z`` in batches of ``batch_size``. Single: the first ``single_samples`` one at
    a time (what a request without server-side batching costs). Both include the top-K selection of
    :func:`ngsll.explain.sparse_explanation`.

    Returns:
        ``{"ms_per_sample_batched", "ms_per_sample_single", "ms_per_sample_single_std"}``.
    """
    model.eval()
    device = z.device
    k, task = model.args.k, model.args.task

    def explain(xb: torch.Tensor, zb: torch.Tensor) -> None:
        sparse_explanation(model(xb, zb), zb, k, task)

    for _ in range(warmup):
        explain(x[:batch_size], z[:batch_size])
        explain(x[:1], z[:1])
    _synchronize(device)
    started = time.perf_counter()
    for start in range(0, len(z), batch_size):
        explain(x[start : start + batch_size], z[start : start + batch_size])
    _synchronize(device)
    batched_ms = (time.perf_counter() - started) * 1000 / len(z)
    single_ms = []
    for index in range(min(single_samples, len(z))):
        started = time.perf_counter()
        explain(x[index : index + 1], z[index : index + 1])
        _synchronize(device)
        single_ms.append((time.perf_counter() - started) * 1000)
    return {
        "ms_per_sample_batched": batched_ms,
        "ms_per_sample_single": statistics.fmean(single_ms),
        "ms_per_sample_single_std": statistics.pstdev(single_ms),
    }


def format_table(
    rows: dict[str, dict[int, float]],
    ks: Sequence[int],
    title: str = "accuracy",
    precision: int = 3,
    column: str = "K = {}",
) -> str:
    """A Markdown table: one row per model, one column per K (header ``column``); missing shows as ``-``.

    ``rows`` maps model name -> {K: value}; a model constant in K (the DNN) may give one value under any K,
    which is then shown in every column.
    """
    header = f"| {title} | " + " | ".join(column.format(k) for k in ks) + " |"
    lines = [header, "|" + "---|" * (len(ks) + 1)]
    for name, values in rows.items():
        constant = next(iter(values.values())) if len(values) == 1 else None
        cells = []
        for k in ks:
            value = values.get(k, constant)
            cells.append("-" if value is None else f"{value:.{precision}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
