"""Explanation cost per table row, measured side by side in one run: NGSLL versus TreeSHAP and LIME.

Binary and regression tables (a regression dataset gets ``GradientBoostingRegressor``, R² / RMSE / MAE in the
target's units, and LIME in regression mode).

* NGSLL: ms per row for the prediction **and** its top-K weights, one row at a time and batched (the
  pipeline's fine checkpoints of a ``kind: table`` dataset), in torch and through the numpy forward pass
  and top-K selection the CPU serving path runs (:class:`ngsll.numpy_table.NumpyTableModel`).
* TreeSHAP: ``shap.TreeExplainer`` (exact, path-dependent) on scikit-learn's ``GradientBoostingClassifier``
  (100 trees of depth 3, the usual gradient-boosted model a credit team explains after the fact) fitted on
  the same simplified rows z, one row at a time and batched; it attributes every feature, so its cost does
  not depend on K (the top-K is one sort after).
* LIME: the ``lime`` package's tabular explainer on the same gradient-boosted model, ``num_samples``
  perturbations (LIME's default 5,000), ``num_features=K``.

The gradient-boosted model's test accuracy and ROC AUC are printed beside NGSLL's, so the cost table
says what each explainer explains. Uses the pipeline's prepared split and checkpoints::

    .venv/bin/python benchmarks/table_cost.py --data-dir data/prepared/german --fine-dir models/german/fine
    .venv/bin/python benchmarks/table_cost.py ... --quick     # 3 LIME explanations, 20 single rows

TreeSHAP and LIME are the ``benchmarks`` extra (``pip install -e .[benchmarks]``); a missing package is
reported and its rows left out. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import explain_one_pass, optional_rows, table, timed  # noqa: E402

from ngsll.checkpoint import model_from_checkpoint  # noqa: E402
from ngsll.evaluation import METRIC_TITLES, format_table, model_logits, output_metrics  # noqa: E402
from ngsll.model import NGSLL  # noqa: E402
from ngsll.numpy_table import NumpyTableModel  # noqa: E402
from ngsll.target import TargetScale  # noqa: E402

Rows = dict[str, dict[int, tuple[float, float]]]


def explain_numpy(model: NumpyTableModel, x: np.ndarray, z: np.ndarray) -> None:
    """What the CPU serving path does: the numpy forward pass and top-K selection."""
    model.explain(x, z)


def ngsll_rows(models: dict[int, NGSLL], x: np.ndarray, z: np.ndarray, samples: int) -> Rows:
    """NGSLL's prediction + top-K weights, in torch and through the numpy forward pass: one row at a time
    (``samples`` rows), and the whole split batched."""
    xs, zs = torch.from_numpy(x), torch.from_numpy(z)
    rows: Rows = {}
    for k, model in models.items():
        model.eval()
        numpy_model = NumpyTableModel(model)
        for engine, explain in (("torch", lambda part: explain_one_pass(model, xs[part], zs[part])),
                                ("numpy", lambda part: explain_numpy(numpy_model, x[part], z[part]))):
            times = [timed(lambda i=i: explain(slice(i, i + 1)), 1)[0] for i in range(samples)]
            rows.setdefault(f"NGSLL {engine}, 1 row", {})[k] = (statistics.fmean(times), statistics.pstdev(times))
            batched = timed(lambda: explain(slice(None)), 5)[0] / len(zs)
            rows.setdefault(f"NGSLL {engine}, batch of {len(zs)} (per row)", {})[k] = (batched, 0.0)
    return rows


def tree_shap_rows(forest, z: np.ndarray, ks: list[int], samples: int) -> Rows:
    """TreeSHAP of every feature, one row at a time and the split batched; the top-K is one sort after."""
    import shap

    explainer = shap.TreeExplainer(forest)

    def explain(rows: np.ndarray) -> np.ndarray:
        values = explainer.shap_values(rows)  # (n, d) attributions to the log-odds (binary) or the value
        return np.argsort(-np.abs(values), axis=1)[:, : max(ks)]  # (n, K) the K largest

    times = [timed(lambda i=i: explain(z[i : i + 1]), 1)[0] for i in range(samples)]
    single = (statistics.fmean(times), statistics.pstdev(times))
    batched = (timed(lambda: explain(z), 3)[0] / len(z), 0.0)
    return {"TreeSHAP on gradient boosting, 1 row": {k: single for k in ks},
            f"TreeSHAP on gradient boosting, batch of {len(z)} (per row)": {k: batched for k in ks}}


def lime_rows(forest, train_z: np.ndarray, z: np.ndarray, ks: list[int], samples: int, num_samples: int,
              seed: int, regression: bool = False) -> Rows:
    from lime.lime_tabular import LimeTabularExplainer

    explainer = LimeTabularExplainer(train_z, mode="regression" if regression else "classification", random_state=seed)
    predict = forest.predict if regression else forest.predict_proba
    row: dict[int, tuple[float, float]] = {}
    for k in ks:
        times = [timed(lambda i=i: explainer.explain_instance(z[i], predict, num_features=k,
                                                              num_samples=num_samples), 1)[0]
                 for i in range(samples)]
        row[k] = (statistics.fmean(times), statistics.pstdev(times))
    return {f"LIME tabular ({num_samples} samples) on gradient boosting": row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="a table dataset's prepared folder")
    parser.add_argument("--fine-dir", type=Path, required=True)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--samples", type=int, default=100, help="test rows timed one at a time")
    parser.add_argument("--lime-samples", type=int, default=20, help="test rows explained by LIME")
    parser.add_argument("--num-samples", type=int, default=5000, help="LIME perturbations per explanation")
    parser.add_argument("--quick", action="store_true", help="3 LIME explanations, 20 single rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.lime_samples = 20, 3
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    torch.manual_seed(args.seed)
    with np.load(args.data_dir / "test.npz") as test, np.load(args.data_dir / "train.npz") as train:
        if "table_x" not in test.files:
            raise SystemExit(f"{args.data_dir} is not a table dataset's prepared folder (no table_x in test.npz)")
        x, z, y = test["table_x"], test["z"], test["y"]
        train_z, train_y = train["z"], train["y"]
    models = {k: model_from_checkpoint(torch.load(args.fine_dir / f"k{k}.pt", weights_only=True)) for k in args.ks}
    task = models[args.ks[0]].args.task
    if task == "multiclass":
        raise SystemExit(f"TreeSHAP's rows here explain one output (binary or regression); {args.fine_dir} is {task}")
    regression = task == "regression"
    features = json.loads((args.data_dir / "features.json").read_text())
    scale = TargetScale.from_dict(features["target"]) if regression else None  # metrics in the target's units
    model_type = GradientBoostingRegressor if regression else GradientBoostingClassifier
    boosted = model_type(random_state=args.seed).fit(train_z, train_y)
    outputs = {"gradient boosting": boosted.predict(z)[:, None] if regression else boosted.predict_proba(z)}
    outputs |= {k: model_logits(model, torch.from_numpy(x), torch.from_numpy(z)) for k, model in models.items()}
    quality: dict[str, dict[str, dict[int, float]]] = {}
    for name, output in outputs.items():  # both models fit the prepared y (standardised for regression)
        for metric, value in output_metrics(y, output, task, name == "gradient boosting", scale).items():
            row, k = ("gradient boosting", 0) if name == "gradient boosting" else ("NGSLL", name)
            quality.setdefault(metric, {}).setdefault(row, {})[k] = value
    rows = ngsll_rows(models, x, z, min(args.samples, len(z)))
    explainers = {
        "shap": lambda: tree_shap_rows(boosted, z, args.ks, min(args.samples, len(z))),
        "lime": lambda: lime_rows(boosted, train_z, z, args.ks, min(args.lime_samples, len(z)), args.num_samples,
                                  args.seed, regression),
    }
    rows |= optional_rows(explainers)
    print(f"\n{args.data_dir}: {len(z)} test rows, {z.shape[1]} features; CPU threads: {torch.get_num_threads()}\n")
    for metric, values in quality.items():
        print(format_table(values, args.ks, title=METRIC_TITLES[metric]) + "\n")
    print(table(rows, args.ks, reference="NGSLL numpy, 1 row"))


if __name__ == "__main__":
    main()
