"""Accuracy tables in the shape of the paper's Table 1, each model's test metrics from its outputs (accuracy
and ROC AUC; RMSE, MAE and R² for regression), and per-sample explanation timings."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ngsll.errors import InputError
from ngsll.explain import sparse_explanation
from ngsll.model import NGSLL, DNNClassifier
from ngsll.target import TargetScale, regression_metrics
from ngsll.train import logits_of


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


@torch.inference_mode()
def model_logits(model: NGSLL | DNNClassifier, x: torch.Tensor, z: torch.Tensor, batch_size: int = 1024,
                 mask: torch.Tensor | None = None) -> np.ndarray:
    """(N, C) logits of ``model`` (evaluation mode) over x (N, ...) and z (N, d), in batches; C = 1 for binary.

    ``mask``: (N, d) bool features an NGSLL's gate may not open, instead of its own (z_j == 0 by default).
    """
    was_training = model.training
    model.eval()

    def batch_logits(rows: slice) -> torch.Tensor:
        output = model(x[rows], z[rows]) if mask is None else model(x[rows], z[rows], mask[rows])
        return logits_of(output).float().cpu()  # (B, C)

    logits = [batch_logits(slice(i, i + batch_size)) for i in range(0, len(z), batch_size)]
    model.train(was_training)
    return torch.cat(logits).numpy()


def roc_auc(y: np.ndarray, scores: np.ndarray, task: str, probabilities: bool = False) -> float | None:
    """Test ROC AUC of a classifier's scores, or None where it is undefined (a class absent from ``y``).

    Args:
        y: (N,) class indices.
        scores: (N, C) logits / decision values, or class probabilities with ``probabilities``. Binary: C = 1
            (the positive class's score) or C = 2 (its column 1 is used). Multi-class: C classes, turned into
            probabilities by a softmax unless they are already; the AUC is the macro one-versus-rest mean.
        task: ``binary`` or ``multiclass``.
    """
    if task not in ("binary", "multiclass"):
        raise InputError(f"ROC AUC needs a classification task (binary | multiclass), got {task!r}")
    if scores.ndim != 2 or len(scores) != len(y):
        raise InputError(f"scores must have shape (N={len(y)}, C), got {scores.shape}")
    num_classes = 2 if task == "binary" else scores.shape[1]
    if len(np.unique(y)) < num_classes:
        return None
    if task == "binary":
        return float(roc_auc_score(y, scores[:, -1]))
    if not probabilities:
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))  # (N, C)
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    return float(roc_auc_score(y, scores, multi_class="ovr", labels=np.arange(num_classes)))


METRIC_TITLES = {"accuracy": "test accuracy", "auc": "test ROC AUC", "r2": "test R²", "rmse": "test RMSE",
                 "mae": "test MAE"}


def primary_metric(task: str) -> str:
    """The metric a task's tables, plots and registry tags lead with: accuracy, or R² for regression."""
    return "r2" if task == "regression" else "accuracy"


def output_metrics(y: np.ndarray, outputs: np.ndarray, task: str, probabilities: bool = False,
                   scale: TargetScale | None = None) -> dict[str, float]:
    """Test metrics of one model from its outputs: accuracy (and ROC AUC where defined) for classes; RMSE,
    MAE and R² in the target's own units for regression.

    Args:
        y: (N,) class indices, or the standardised target for regression.
        outputs: (N, C) logits / decision values (binary: C = 1, the positive class's score), or class
            probabilities with ``probabilities``; regression: (N, 1) standardised predictions.
        task: ``binary``, ``multiclass`` or ``regression`` (which needs the target's ``scale``).
    """
    if outputs.ndim != 2 or len(outputs) != len(y):
        raise InputError(f"outputs must have shape (N={len(y)}, C), got {outputs.shape}")
    if task == "regression":
        if scale is None:
            raise InputError("regression metrics need the target's scale (features.json's target)")
        return regression_metrics(scale.restore(np.asarray(y, dtype=np.float64)),
                                  scale.restore(outputs[:, 0].astype(np.float64)))
    if outputs.shape[1] > 1:
        predicted = outputs.argmax(axis=1)  # (N,)
    else:
        predicted = (outputs[:, 0] > (0.5 if probabilities else 0.0)).astype(np.int64)  # (N,)
    metrics = {"accuracy": float((predicted == y).mean())}
    auc = roc_auc(y, outputs, task, probabilities)
    if auc is not None:
        metrics["auc"] = auc
    return metrics


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
