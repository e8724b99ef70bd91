"""Explanation latency, measured side by side in one run: NGSLL versus LIME, SHAP and Captum (paper Table 2).

* NGSLL: ms per sample for the prediction **and** its top-K weights at each K, one sample at a time
  and batched, with the one-pass top-K gate and with the paper's sequential K-step gate.
* LIME: the ``lime`` package's tabular explainer on the 49 simplified features explaining a random
  forest (as in the paper), ``num_samples`` perturbations (LIME's default 5,000), default
  ``feature_selection='auto'`` (forward selection when K <= 6, so K = 5 can cost more than K = 10).
* SHAP: ``shap.KernelExplainer`` on the same random forest with a k-means background (10 centres),
  ``nsamples="auto"`` and ``l1_reg="num_features(K)"`` so it returns K features.
* Captum: ``Lime`` and ``KernelShap`` explaining the DNN (the pipeline's ``dnn.pt``) on the 28x28 image
  with a 7x7 feature mask (49 cells of 4x4 pixels), ``num_samples`` perturbations evaluated in batches;
  they attribute all 49 cells, so their cost does not depend on K (the top-K is one ``topk`` after).

Uses the pipeline's prepared test split and checkpoints::

    .venv/bin/python benchmarks/latency.py --data-dir data/prepared/mnist --fine-dir models/mnist/fine \
        --dnn models/mnist/dnn.pt
    .venv/bin/python benchmarks/latency.py ... --quick     # a few samples, a few minutes

The explainer packages are the ``benchmarks`` extra (``pip install -e .[benchmarks]``); a missing one is
reported and its rows left out. Prints one Markdown table (mean ± std ms per explanation, ratio to NGSLL
single-sample one-pass). Timings are printed, never asserted.
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


def shap_rows(train_z: np.ndarray, train_y: np.ndarray, z: np.ndarray, ks: list[int], samples: int,
              seed: int) -> dict[str, dict[int, tuple[float, float]]]:
    import shap
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1).fit(train_z, train_y)
    explainer = shap.KernelExplainer(forest.predict_proba, shap.kmeans(train_z, min(10, len(train_z))))
    row: dict[int, tuple[float, float]] = {}
    for k in ks:
        times = [timed(lambda i=i: explainer.shap_values(z[i : i + 1], nsamples="auto", l1_reg=f"num_features({k})",
                                                         silent=True), 1)[0]
                 for i in range(samples)]
        row[k] = (statistics.fmean(times), statistics.pstdev(times))
    return {"SHAP KernelExplainer (k-means 10) on a random forest": row}


def cell_mask(image_size: int, cells: int) -> torch.Tensor:
    """(1, 1, H, H) int64 feature mask: pixel -> index of its cell in a ``cells`` x ``cells`` grid."""
    side = image_size // cells
    rows = torch.arange(image_size) // side  # (H,)
    return (rows[:, None] * cells + rows[None, :]).view(1, 1, image_size, image_size)


def captum_rows(dnn: torch.nn.Module, x: np.ndarray, ks: list[int], samples: int, num_samples: int,
                cells: int = 7, per_eval: int = 500) -> dict[str, dict[int, tuple[float, float]]]:
    from captum.attr import KernelShap, Lime

    dnn.eval()
    xs, mask = torch.from_numpy(x), cell_mask(x.shape[-1], cells)

    def logit(images: torch.Tensor) -> torch.Tensor:
        return dnn(images)[:, 0]  # (B,) the binary DNN's logit

    rows: dict[str, dict[int, tuple[float, float]]] = {}
    for name, explainer in (("Captum Lime", Lime(logit)), ("Captum KernelShap", KernelShap(logit))):
        def explain(i: int, k: int, explainer=explainer) -> torch.Tensor:
            attribution = explainer.attribute(xs[i : i + 1], feature_mask=mask, n_samples=num_samples,
                                              perturbations_per_eval=per_eval)  # (1, 1, H, H)
            per_cell = torch.zeros(cells * cells).index_add_(0, mask.flatten(), attribution.flatten())
            return per_cell.abs().topk(k).indices  # (k,) the K most important cells
        row = {}
        for k in ks:
            times = [timed(lambda i=i: explain(i, k), 1)[0] for i in range(samples)]
            row[k] = (statistics.fmean(times), statistics.pstdev(times))
        rows[f"{name} ({num_samples} samples) on the DNN, 7x7 mask"] = row
    return rows


def optional_rows(explainers: dict[str, Callable[[], dict[str, dict[int, tuple[float, float]]]]],
                  ) -> dict[str, dict[int, tuple[float, float]]]:
    """The rows each explainer package measures; a package that is not installed is reported, its rows left out."""
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    for package, measure in explainers.items():
        try:
            rows |= measure()
        except ImportError as error:
            print(f"{package} rows left out ({error}); install the benchmarks extra: pip install -e '.[benchmarks]'")
    return rows


def table(rows: dict[str, dict[int, tuple[float, float]]], ks: list[int], reference: str) -> str:
    lines = ["| ms per explanation | " + " | ".join(f"K = {k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 1)]
    for name, values in rows.items():
        cells = []
        for k in ks:
            mean, std = values[k]
            ratio = mean / rows[reference][k][0]
            shown = f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.2g}"  # ×1,039 or ×0.25
            cells.append(f"{mean:.3f} ± {std:.3f} (×{shown})" if std else f"{mean:.3f} (×{shown})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--fine-dir", type=Path, required=True)
    parser.add_argument("--dnn", type=Path, help="DNN checkpoint for the Captum rows (left out without it)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--samples", type=int, default=50, help="test samples timed one at a time")
    parser.add_argument("--lime-samples", type=int, default=20, help="test samples explained by each explainer")
    parser.add_argument("--num-samples", type=int, default=5000, help="LIME perturbations per explanation")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="3 explanations per explainer, 20 NGSLL samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.lime_samples = 20, 3
    torch.manual_seed(args.seed)
    with np.load(args.data_dir / "test.npz") as test, np.load(args.data_dir / "train.npz") as train:
        x = test["pixels"][: args.batch].astype(np.float32) / 255.0  # (n, 1, 28, 28)
        z, train_z, train_y = test["z"][: args.batch], train["z"], train["y"]
    models = {k: model_from_checkpoint(torch.load(args.fine_dir / f"k{k}.pt", weights_only=True)) for k in args.ks}
    rows = ngsll_rows(models, x, z, args.samples, args.batch)
    explainers = {
        "lime": lambda: lime_rows(train_z, train_y, z, args.ks, args.lime_samples, args.num_samples, args.seed),
        "shap": lambda: shap_rows(train_z, train_y, z, args.ks, args.lime_samples, args.seed),
    }
    if args.dnn is not None:
        dnn = model_from_checkpoint(torch.load(args.dnn, weights_only=True))
        explainers["captum"] = lambda: captum_rows(dnn, x, args.ks, args.lime_samples, args.num_samples)
    rows |= optional_rows(explainers)
    print(f"\nCPU threads: {torch.get_num_threads()}; NGSLL {args.samples} single samples, batch {args.batch}; "
          f"{args.lime_samples} explanations per explainer\n")
    print(table(rows, args.ks, reference="NGSLL, one-pass top-K, 1 sample"))


if __name__ == "__main__":
    main()
