"""Test accuracy over seeds, in the layout of the paper's Table 1 (MNIST) and Figure 4 (text), by the pipeline.

Each seed is one DVC experiment of this repository's own pipeline, ``dvc exp run --temp -S seed=<s>
-S run=[<datasets>]`` (a different validation split, initialisation, shuffling and Gumbel noise; for MR also a
different test split), run up to the evaluate stage of each dataset; any dataset under ``datasets`` in
params.yaml can be benchmarked, inside the default ``run`` or not (10-class MNIST, Fashion-MNIST). Nothing here trains: the accuracies are read back
from the experiments' ``metrics/<dataset>/evaluate.json`` through ``dvc exp show --json``. Each
experiment stays in ``dvc exp show`` / the MLflow UI afterwards.

    .venv/bin/python benchmarks/accuracy.py                  # five seeds, params.yaml as is (hours on CPU)
    .venv/bin/python benchmarks/accuracy.py --quick          # two seeds, one epoch per phase, TREC only
    .venv/bin/python benchmarks/accuracy.py --datasets mnist --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/accuracy.py --datasets mnist10 fashion --seeds 0   # the examples outside `run`

Prints one Markdown table per dataset: mean (± std) over seeds, the paper's number beside ours where the
paper has one, and the device each figure was measured on; and the same for the test ROC AUC (tables'
usual measure) where the evaluate stage could compute it; a regression dataset gets R² and RMSE instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Paper Table 1 (binary MNIST, five runs): mean accuracy per model and K; the DNN does not depend on K.
PAPER = {
    "mnist": {
        "NGSLL": {1: 0.994, 5: 0.995, 10: 0.994},
        "NGSLL (w/o K-HGM)": {1: 0.967, 5: 0.991, 10: 0.991},
        "Ridge": {1: 0.526, 5: 0.561, 10: 0.582},
        "Lasso": {1: 0.523, 5: 0.549, 10: 0.582},
        "DNN": {0: 0.992},
    },
}
# One epoch per phase: enough to exercise every stage of every seed in minutes, not to reach the paper.
QUICK_OVERRIDES = [f"defaults.{kind}.train.{phase}.max_epochs=1"
                   for kind in ("image", "text", "table") for phase in ("coarse", "fine", "dnn")]


METRICS = (("test_accuracy", "test accuracy"), ("test_auc", "test ROC AUC"), ("test_r2", "test R²"),
           ("test_rmse", "test RMSE (the target's units)"))


def target(dataset: str) -> str:
    return f"evaluate@{dataset}"


def run_seed(repo: Path, seed: int, datasets: list[str], name: str, overrides: list[str]) -> float:
    """One ``dvc exp run --temp`` of the evaluate stages at ``seed``; returns its wall time in seconds."""
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", name, "-S", f"seed={seed}",
               "-S", f"run=[{','.join(datasets)}]"]
    for override in overrides:
        command += ["-S", override]
    command += [target(dataset) for dataset in datasets]
    # The stages' `python` is the interpreter running this benchmark (e.g. .venv/bin/python).
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # --temp runs in a scratch copy: point MLflow at this repository's store so the seeds stay in its UI.
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(repo / 'mlflow.db').resolve()}")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def _experiments(node: Any) -> Iterator[dict[str, Any]]:
    """Every experiment record (a dict with ``name`` and ``data``) anywhere in ``dvc exp show --json``."""
    if isinstance(node, dict):
        if "name" in node and isinstance(node.get("data"), dict):
            yield node
        for value in node.values():
            yield from _experiments(value)
    elif isinstance(node, list):
        for value in node:
            yield from _experiments(value)


def collect(repo: Path, names: list[str], datasets: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, the ``evaluate.json`` contents of the named experiments (in ``names`` order)."""
    # --all-commits: a seed run stays findable when the user commits while the sweep is running.
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--all-commits"], cwd=repo,
                           capture_output=True, text=True, check=True)
    records = {record["name"]: record["data"] for record in _experiments(json.loads(shown.stdout))}
    missing = [name for name in names if name not in records]
    if missing:
        raise SystemExit(f"experiments {missing} are not in `dvc exp show`")
    results: dict[str, list[dict[str, Any]]] = {dataset: [] for dataset in datasets}
    for name in names:
        metrics = records[name].get("metrics", {})
        for dataset in datasets:
            entry = metrics.get(f"metrics/{dataset}/evaluate.json", {})
            if "data" not in entry:
                raise SystemExit(f"experiment {name} has no metrics/{dataset}/evaluate.json")
            results[dataset].append(entry["data"])
    return results


def summary_table(dataset: str, runs: list[dict[str, Any]], metric: str = "test_accuracy") -> str:
    """Markdown: one row per model, one column per K, ``mean (± std)`` of ``metric`` (``test_accuracy``,
    ``test_auc``; for regression ``test_r2``, ``test_rmse``) over runs and, for accuracy, ``[paper x]``."""
    accuracy = [run[metric] for run in runs]
    models = list(accuracy[0])
    ks = sorted({int(k) for row in accuracy[0].values() for k in row if k != "0"})
    paper = PAPER.get(dataset, {}) if metric == "test_accuracy" else {}
    lines = ["| model | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for model in models:
        cells = []
        for k in ks:
            key = str(k) if str(k) in accuracy[0][model] else "0"
            values = [run[model][key] for run in accuracy]
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            cell = f"{statistics.fmean(values):.3f} (±{spread:.3f})"
            reference = paper.get(model, {}).get(k, paper.get(model, {}).get(0))
            cells.append(cell + (f" [paper {reference:.3f}]" if reference is not None else ""))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    devices = sorted({run.get("device", "?") for run in runs})
    return "\n".join(lines) + f"\n\n{len(runs)} seed(s); measured on {', '.join(devices)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", help="names under datasets in params.yaml (default: run; --quick: trec)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 3 4 (--quick: 0 1)")
    parser.add_argument("--quick", action="store_true", help="two seeds, one epoch per training phase")
    parser.add_argument("--prefix", default=f"seeds-{time.strftime('%Y%m%d-%H%M%S')}", help="experiment names")
    parser.add_argument("--set-param", "-S", action="append", default=[], help="extra `dvc exp run -S` override")
    args = parser.parse_args()
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    datasets = args.datasets or (["trec"] if args.quick else list(params["run"]))
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    overrides = (QUICK_OVERRIDES if args.quick else []) + args.set_param
    names = []
    for seed in seeds:
        name = f"{args.prefix}-seed{seed}"
        seconds = run_seed(REPO, seed, datasets, name, overrides)
        print(f"seed {seed}: {name} in {seconds / 60:.1f} min", file=sys.stderr, flush=True)
        names.append(name)
    for dataset, runs in collect(REPO, names, datasets).items():
        mode = "quick (one epoch per phase)" if args.quick else "full"
        for metric, title in METRICS:  # accuracy (and AUC where every class is in the test split), or R², RMSE
            if all(run.get(metric) for run in runs):
                print(f"\n### {dataset}: {title} over seeds {seeds}, {mode}\n")
                print(summary_table(dataset, runs, metric))


if __name__ == "__main__":
    main()
