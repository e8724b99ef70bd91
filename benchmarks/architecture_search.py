"""Choose L (hidden layers) and U (hidden units) of a dataset's weight generator on validation, as the paper does.

The paper picks L in {1, 2} and U in {128, 256} per dataset on the validation set (section 4). Here each point of
the grid (``architecture_search`` in params.yaml) is one DVC experiment of this repository's own pipeline, up to
the fine models of one dataset::

    dvc exp run --temp --name <prefix>-<dataset>-L<L>-U<U> -S 'run=[<dataset>]' \\
        -S ++datasets.<dataset>.model.hidden_layers=<L> -S ++datasets.<dataset>.model.hidden_units=<U> \\
        train_fine@<dataset>

and is scored by the validation accuracy of its fine models (each at the epoch early stopping kept, the lowest
validation loss), averaged over the dataset's K; the test split is never read. Regression datasets are scored
by the validation MSE of the standardised target (lower is better). The validation table is printed, written
to ``metrics/<dataset>/architecture.json`` and logged to the dataset's MLflow experiment (one run, a metric per
grid point, the table as an artifact; every point's own training runs are there too). Choosing is left to you:
the chosen L and U go into ``datasets.<dataset>.model`` of params.yaml, so ``dvc repro`` reuses the recorded
choice instead of searching each time::

    .venv/bin/python benchmarks/architecture_search.py --datasets trec mr     # 4 points each
    .venv/bin/python benchmarks/architecture_search.py --datasets mnist --quick   # one epoch per phase
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import QUICK_OVERRIDES, _experiments  # noqa: E402

from ngsll.config import dataset_settings  # noqa: E402
from ngsll.train import kept_epoch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_point(repo: Path, dataset: str, name: str, layers: int, units: int, overrides: list[str]) -> float:
    """One ``dvc exp run --temp`` of ``train_fine@<dataset>`` at L = ``layers``, U = ``units``; its wall seconds."""
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", name, "-S", f"run=[{dataset}]",
               "-S", f"++datasets.{dataset}.model.hidden_layers={layers}",
               "-S", f"++datasets.{dataset}.model.hidden_units={units}"]
    for override in overrides:
        command += ["-S", override]
    command.append(f"train_fine@{dataset}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(repo / 'mlflow.db').resolve()}")  # --temp: this store
    started = time.perf_counter()
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def experiment_revisions(repo: Path, names: list[str]) -> dict[str, str]:
    """The git commit of each named experiment, from ``dvc exp show --json``."""
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--all-commits"], cwd=repo,
                           capture_output=True, text=True, check=True)
    revisions = {record["name"]: record.get("rev") for record in _experiments(json.loads(shown.stdout))}
    missing = [name for name in names if not revisions.get(name)]
    if missing:
        raise SystemExit(f"experiments {missing} are not in `dvc exp show`")
    return {name: revisions[name] for name in names}


def validation_scores(repo: Path, revision: str, dataset: str) -> dict[str, float]:
    """Per K, the kept fine model's validation accuracy (``mse`` for regression), read from the experiment's
    committed ``metrics/<dataset>/history/fine/k<K>.json`` at the epoch its fine phase kept (its params' monitor)."""
    folder = f"metrics/{dataset}/history/fine"
    params = yaml.safe_load(subprocess.run(["git", "show", f"{revision}:params.yaml"], cwd=repo, capture_output=True,
                                           text=True, check=True).stdout)
    monitor = dataset_settings(params, dataset).train["fine"].get("monitor", "val_loss")  # the experiment's own
    listed = subprocess.run(["git", "ls-tree", "--name-only", f"{revision}:{folder}"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout.split()
    scores = {}
    for file in sorted(listed, key=lambda name: int(name[1:-5])):  # k1.json, k5.json, k10.json
        shown = subprocess.run(["git", "show", f"{revision}:{folder}/{file}"], cwd=repo, capture_output=True,
                               text=True, check=True)
        row = kept_epoch(json.loads(shown.stdout), monitor)
        scores[file[1:-5]] = float(row["val_accuracy"] if "val_accuracy" in row else row["val_mse"])
    return scores


def choose(points: list[dict[str, Any]], lower_is_better: bool) -> dict[str, Any]:
    """The grid point with the best mean validation score (the first of equal ones, i.e. the smaller network)."""
    sign = 1.0 if lower_is_better else -1.0
    return min(points, key=lambda point: sign * point["mean"])


def markdown(record: dict[str, Any]) -> str:
    """The validation table of a search record: a row per grid point, a column per K, the mean, the minutes."""
    points, chosen = record["points"], record["chosen"]
    ks = list(points[0]["scores"])
    lines = [f"| {record['dataset']}: validation {record['metric']} | " + " | ".join(f"K = {k}" for k in ks)
             + " | mean | minutes |", "|---|" + "---|" * (len(ks) + 2)]
    for point in points:
        picked = (point["hidden_layers"], point["hidden_units"]) == (chosen["hidden_layers"], chosen["hidden_units"])
        mark = " **(chosen)**" if picked else ""
        cells = " | ".join(f"{point['scores'][k]:.4f}" for k in ks)
        lines.append(f"| L = {point['hidden_layers']}, U = {point['hidden_units']}{mark} | {cells} | "
                     f"{point['mean']:.4f} | {point['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def log_to_mlflow(repo: Path, dataset: str, record: dict[str, Any], table: str) -> None:
    """One run in the dataset's MLflow experiment: the grid, a metric per point, the table and the choice."""
    import mlflow

    sys.path.insert(0, str(repo / "plugins"))
    from ngsll_plugins.tracking import configure

    configure(dataset, root=repo)
    with mlflow.start_run(run_name="architecture search"):
        mlflow.set_tags({"stage": "architecture_search", "metric": record["metric"]})
        mlflow.log_params({"grid_hidden_layers": record["grid"]["hidden_layers"],
                           "grid_hidden_units": record["grid"]["hidden_units"], "overrides": record["overrides"],
                           "chosen_hidden_layers": record["chosen"]["hidden_layers"],
                           "chosen_hidden_units": record["chosen"]["hidden_units"]})
        for point in record["points"]:
            key = f"val_{record['metric']}_L{point['hidden_layers']}_U{point['hidden_units']}"
            mlflow.log_metric(key, point["mean"])
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "architecture.md"
            path.write_text(table + "\n")
            mlflow.log_artifact(str(path))


def search(repo: Path, dataset: str, grid: dict[str, list[int]], prefix: str, overrides: list[str],
           regression: bool = False) -> dict[str, Any]:
    """Run every grid point of ``dataset`` as an experiment of ``repo`` and score it on validation.

    Returns the record written to ``metrics/<dataset>/architecture.json``: the grid, each point's name, L, U,
    per-K validation scores, their mean and wall seconds, the metric and the chosen L, U.
    """
    points = []
    for hidden_layers, hidden_units in itertools.product(grid["hidden_layers"], grid["hidden_units"]):
        name = f"{prefix}-{dataset}-L{hidden_layers}-U{hidden_units}"
        seconds = run_point(repo, dataset, name, hidden_layers, hidden_units, overrides)
        print(f"{name}: {seconds / 60:.1f} min", file=sys.stderr, flush=True)
        points.append({"name": name, "hidden_layers": hidden_layers, "hidden_units": hidden_units,
                       "seconds": round(seconds, 1)})
    revisions = experiment_revisions(repo, [point["name"] for point in points])
    for point in points:
        point["scores"] = validation_scores(repo, revisions[point["name"]], dataset)
        point["mean"] = statistics.fmean(point["scores"].values())
    chosen = choose(points, lower_is_better=regression)
    return {"dataset": dataset, "metric": "mse" if regression else "accuracy", "overrides": overrides,
            "grid": grid, "points": points,
            "chosen": {"hidden_layers": chosen["hidden_layers"], "hidden_units": chosen["hidden_units"]}}


def write_record(repo: Path, record: dict[str, Any]) -> Path:
    """``metrics/<dataset>/architecture.json``, written whole or not at all."""
    out = repo / "metrics" / record["dataset"] / "architecture.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", required=True, help="names under datasets in params.yaml")
    parser.add_argument("--quick", action="store_true", help="one epoch per training phase (a smoke run)")
    parser.add_argument("--prefix", default=f"arch-{time.strftime('%Y%m%d-%H%M%S')}", help="experiment names")
    parser.add_argument("--set-param", "-S", action="append", default=[], help="extra `dvc exp run -S` override")
    args = parser.parse_args()

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    grid = params.get("architecture_search") or {}
    if not grid.get("hidden_layers") or not grid.get("hidden_units"):
        raise SystemExit("params.yaml needs architecture_search: {hidden_layers: [...], hidden_units: [...]}")
    unknown = [name for name in args.datasets if name not in params.get("datasets", {})]
    if unknown:
        raise SystemExit(f"{unknown} are not under datasets in params.yaml; known: {sorted(params['datasets'])}")
    overrides = (QUICK_OVERRIDES if args.quick else []) + args.set_param
    grid = {"hidden_layers": list(grid["hidden_layers"]), "hidden_units": list(grid["hidden_units"])}
    for dataset in args.datasets:
        regression = (params["datasets"][dataset].get("data") or {}).get("task") == "regression"
        record = search(REPO, dataset, grid, args.prefix, overrides, regression)
        table, chosen = markdown(record), record["chosen"]
        out = write_record(REPO, record)
        log_to_mlflow(REPO, dataset, record, table)
        print(f"\n{table}\n\nchosen for {dataset}: datasets.{dataset}.model.hidden_layers: {chosen['hidden_layers']}"
              f", hidden_units: {chosen['hidden_units']} (params.yaml; recorded in {out.relative_to(REPO)})")


if __name__ == "__main__":
    main()
