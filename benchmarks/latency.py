"""Explanation latency, measured side by side in one run: NGSLL versus LIME (paper Table 2).

* NGSLL: ms per sample for the prediction **and** its top-K weights at each K, one sample at a time
  and batched, with the one-pass top-K gate and with the paper's sequential K-step gate.
* LIME: the ``lime`` package's tabular explainer on the 49 simplified features explaining a random
  forest (as in the paper), ``num_samples`` perturbations (LIME's default 5,000), default
  ``feature_selection='auto'`` (forward selection when K <= 6, so K = 5 can cost more than K = 10).

Uses the pipeline's prepared test split and fine checkpoints::

    .venv/bin/python benchmarks/latency.py --data-dir data/prepared/mnist --fine-dir models/mnist/fine
    .venv/bin/python benchmarks/latency.py ... --quick     # a few samples, a minute or two

Prints one Markdown table (mean ± std ms per explanation, ratio to NGSLL single-sample one-pass).
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ngsll.checkpoint import model_from_checkpoint
from ngsll.explain import sparse_explanation
from ngsll.gate import sequential_argmax_gate
from ngsll.model import NGSLL, NGSLLOutput


def timed(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Mean and standard deviation in ms of ``repeats`` calls (after one warm-up call)."""
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.fmean(samples), statistics.pstdev(samples)


@torch.inference_mode()
def explain_sequential(model: NGSLL, x: torch.Tensor, z: torch.Tensor) -> None:
    """Prediction + top-K weights with the paper's K-step gate instead of the one-pass top-K."""
    dense = model.generator(x).view(len(z), model.args.num_features, model.args.num_outputs)  # (B, d, C)
    gate = sequential_argmax_gate(dense.pow(2).sum(-1), model.feature_mask(z), model.args.k)  # (B, d)
    weights = dense * gate.unsqueeze(-1)  # (B, d, C)
    output = NGSLLOutput(torch.einsum("bd,bdc->bc", z, weights), weights, gate, dense)
    sparse_explanation(output, z, model.args.k, model.args.task)


@torch.inference_mode()
def explain_one_pass(model: NGSLL, x: torch.Tensor, z: torch.Tensor) -> None:
    sparse_explanation(model(x, z), z, model.args.k, model.args.task)


def ngsll_rows(models: dict[int, NGSLL], x: np.ndarray, z: np.ndarray, samples: int, batch: int) -> dict[str, dict[int, tuple[float, float]]]:
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    xs, zs = torch.from_numpy(x), torch.from_numpy(z)
    for k, model in models.items():
        model.eval()
        for gate, explain in (("one-pass top-K", explain_one_pass), ("sequential K-step", explain_sequential)):
            single = [timed(lambda i=i: explain(model, xs[i : i + 1], zs[i : i + 1]), 1)[0] for i in range(samples)]
            rows.setdefault(f"NGSLL, {gate}, 1 sample", {})[k] = (statistics.fmean(single), statistics.pstdev(single))
            mean, _ = timed(lambda: explain(model, xs[:batch], zs[:batch]), 5)
            rows.setdefault(f"NGSLL, {gate}, batch {batch} (per sample)", {})[k] = (mean / batch, 0.0)
    return rows


def lime_rows(train_z: np.ndarray, train_y: np.ndarray, z: np.ndarray, ks: list[int], samples: int,
              num_samples: int, seed: int) -> dict[str, dict[int, tuple[float, float]]]:
    from lime.lime_tabular import LimeTabularExplainer
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1).fit(train_z, train_y)
    explainer = LimeTabularExplainer(train_z, mode="classification", random_state=seed)
    row: dict[int, tuple[float, float]] = {}
    for k in ks:
        times = [timed(lambda i=i: explainer.explain_instance(z[i], forest.predict_proba, num_features=k,
                                                              num_samples=num_samples), 1)[0]
                 for i in range(samples)]
        row[k] = (statistics.fmean(times), statistics.pstdev(times))
    return {f"LIME tabular ({num_samples} samples) on a random forest": row}


def table(rows: dict[str, dict[int, tuple[float, float]]], ks: list[int], reference: str) -> str:
    lines = ["| ms per explanation | " + " | ".join(f"K = {k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 1)]
    for name, values in rows.items():
        cells = []
        for k in ks:
            mean, std = values[k]
            ratio = mean / rows[reference][k][0]
            cells.append(f"{mean:.3f} ± {std:.3f} (×{ratio:,.0f})" if std else f"{mean:.3f} (×{ratio:,.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--fine-dir", type=Path, required=True)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--samples", type=int, default=50, help="test samples timed one at a time")
    parser.add_argument("--lime-samples", type=int, default=20, help="test samples explained by LIME")
    parser.add_argument("--num-samples", type=int, default=5000, help="LIME perturbations per explanation")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="5 LIME explanations, 20 NGSLL samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.lime_samples = 20, 5
    torch.manual_seed(args.seed)
    with np.load(args.data_dir / "test.npz") as test, np.load(args.data_dir / "train.npz") as train:
        x = (test["pixels"][: args.batch].astype(np.float32) / 255.0)[:, None]
        z, train_z, train_y = test["z"][: args.batch], train["z"], train["y"]
    models = {k: model_from_checkpoint(torch.load(args.fine_dir / f"k{k}.pt", weights_only=True)) for k in args.ks}
    rows = ngsll_rows(models, x, z, args.samples, args.batch)
    rows |= lime_rows(train_z, train_y, z, args.ks, args.lime_samples, args.num_samples, args.seed)
    print(f"\nCPU threads: {torch.get_num_threads()}; NGSLL {args.samples} single samples, batch {args.batch}; "
          f"LIME {args.lime_samples} explanations\n")
    print(table(rows, args.ks, reference="NGSLL, one-pass top-K, 1 sample"))


if __name__ == "__main__":
    main()
