"""Training recipes compared over seeds on a dataset's prepared split: which one to put in params.yaml.

A recipe is params.yaml with overrides in ``dvc exp run -S`` form (a dotted key, ``=``, a YAML value). For each
recipe and seed this trains the dataset's models the way the training stages do, with the same code
(``ngsll.config``'s phases, ``ngsll.train.train_phase``): the DNN, and NGSLL's coarse phase followed by one
fine model per K from it. It scores each on the validation and the test split. The seed changes the
initialisation, shuffling, dropout and Gumbel noise, not the split: that is the prepared one (params' ``seed``).
So recipes are compared on the same questions, quickly and in one process; ``accuracy.py`` is the full
protocol (whole DVC experiments, a new split per seed) for the recipe that wins. Choose on validation: the
test column is printed for the record, never to choose by.

Nothing is written to DVC or MLflow. It needs the prepared split: ``dvc repro validate_prepared@<dataset>``.

    .venv/bin/python benchmarks/recipes.py --dataset trec --models dnn \\
        --recipe monitor datasets.trec.train.dnn.monitor=val_accuracy datasets.trec.train.dnn.max_epochs=20 \\
                         datasets.trec.train.dnn.patience=5

Prints one Markdown table: per recipe and model (the DNN, NGSLL at each K), the mean (± std) over seeds of
the validation and the test accuracy, and the minutes each seed took.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipeline"))

from ngsll import build_model  # noqa: E402
from ngsll.config import coarse_phase, dataset_settings, fine_phase, model_args, reference_phase  # noqa: E402
from ngsll.errors import ConfigError  # noqa: E402
from ngsll.train import TensorData, evaluate, seed_everything, train_phase  # noqa: E402
from stage_io import load_split  # noqa: E402

BASELINE = "params.yaml"


def with_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``params`` with each ``dotted.key=yaml value`` set, creating sections where missing."""
    changed = copy.deepcopy(params)
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator or not key:
            raise ConfigError(f"an override is dotted.key=value, got {override!r}")
        *sections, leaf = key.split(".")
        node = changed
        for name in sections:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{override!r}: {name!r} is a value, not a section")
        node[leaf] = yaml.safe_load(value)
    return changed


def recipe_overrides(recipe_args: list[list[str]], baseline: bool = True) -> dict[str, list[str]]:
    """``{recipe name: its overrides}`` from ``--recipe NAME KEY=VALUE ...`` arguments, led by params.yaml as it
    is (no overrides) unless ``baseline`` is false; raises :class:`ConfigError` when that leaves no recipe."""
    if not baseline and not recipe_args:
        raise ConfigError("--no-baseline leaves nothing to train: name at least one --recipe")
    return {**({BASELINE: []} if baseline else {}), **{name: items for name, *items in recipe_args}}


def train_and_score(dataset: str, params: dict[str, Any], seed: int, models: list[str],
                    data_dir: Path) -> dict[str, Any]:
    """Train ``models`` (``dnn``, ``ngsll``) of ``dataset`` under ``params`` at ``seed``.

    Returns ``{"scores": {model label: [validation accuracy, test accuracy]}, "seconds": wall time}``; NGSLL's
    labels are ``NGSLL K=<k>``, one per K of the dataset's ``train.ks``.
    """
    started = time.perf_counter()
    settings = dataset_settings(params, dataset)
    features = json.loads((data_dir / "features.json").read_text())
    splits = {name: load_split(data_dir / f"{name}.npz") for name in ("train", "validation", "test")}
    data = {name: TensorData.from_arrays(split.x, split.z, split.y) for name, split in splits.items()}

    def scores(model) -> list[float]:
        return [evaluate(model, data[name])["accuracy"] for name in ("validation", "test")]

    result: dict[str, list[float]] = {}
    if "dnn" in models:
        seed_everything(seed)
        dnn = build_model(model_args(settings, features, kind="dnn"))
        train_phase(dnn, data["train"], data["validation"], reference_phase(settings.train, k=dnn.args.k),
                    seed=seed, progress=False)
        result["DNN"] = scores(dnn)
    if "ngsll" in models:
        seed_everything(seed)
        model = build_model(model_args(settings, features))
        coarse = train_phase(model, data["train"], data["validation"], coarse_phase(settings.train), seed=seed,
                             progress=False)
        coarse_state = copy.deepcopy(model.state_dict())
        for k in settings.ks:
            seed_everything(seed)
            model.load_state_dict(coarse_state)
            train_phase(model, data["train"], data["validation"], fine_phase(settings.train, k, coarse.final_lr),
                        seed=seed, progress=False)
            result[f"NGSLL K={k}"] = scores(model)
    return {"scores": result, "seconds": time.perf_counter() - started}


def mean_std(values: list[float]) -> str:
    """``0.879 (±0.011)``: the mean and the sample standard deviation (0 for one value)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} (±{spread:.3f})"


def recipes_table(runs: dict[str, list[dict[str, Any]]], overrides: dict[str, list[str]]) -> str:
    """Markdown table of :func:`train_and_score` results, ``runs[recipe]`` holding one result per seed."""
    lines = ["| recipe | model | validation accuracy | test accuracy | minutes per seed |", "|---|---|---|---|---|"]
    for recipe, seeds in runs.items():
        minutes = statistics.mean(run["seconds"] for run in seeds) / 60
        for label in seeds[0]["scores"]:
            validation = [run["scores"][label][0] for run in seeds]
            test = [run["scores"][label][1] for run in seeds]
            lines.append(f"| {recipe} | {label} | {mean_std(validation)} | {mean_std(test)} | {minutes:.1f} |")
    described = [f"- **{recipe}**: {' '.join(f'`{item}`' for item in items) or 'params.yaml as it is'}"
                 for recipe, items in overrides.items()]
    return "\n".join(lines + [""] + described)


def _one_thread_each(threads: int) -> None:
    torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--models", nargs="+", choices=("dnn", "ngsll"), default=["dnn", "ngsll"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipe", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                        help="a recipe: its name, then overrides of params.yaml (repeatable); params.yaml as it "
                             "is runs first unless --no-baseline")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip params.yaml as it is (its numbers are already known); needs a --recipe")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once, the cores shared evenly")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--data-dir", type=Path, help="prepared splits (default: data/prepared/<dataset>)")
    args = parser.parse_args()

    params = yaml.safe_load(args.params.read_text())
    try:
        overrides = recipe_overrides(args.recipe, baseline=not args.no_baseline)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    try:
        recipes = {recipe: with_overrides(params, items) for recipe, items in overrides.items()}
    except ConfigError as error:
        raise SystemExit(f"--recipe: {error}") from None
    data_dir = args.data_dir or REPO / "data" / "prepared" / args.dataset
    if not (data_dir / "features.json").exists():
        raise SystemExit(f"no prepared split in {data_dir}: run `dvc repro validate_prepared@{args.dataset}` first")
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)  # two trainings of all cores each would fight for them
    started = time.perf_counter()
    with ProcessPoolExecutor(jobs, initializer=_one_thread_each, initargs=(threads,)) as pool:
        futures = {(recipe, seed): pool.submit(train_and_score, args.dataset, recipe_params, seed, args.models, data_dir)
                   for recipe, recipe_params in recipes.items() for seed in args.seeds}
        runs: dict[str, list[dict[str, Any]]] = {recipe: [] for recipe in overrides}
        for (recipe, seed), future in futures.items():
            runs[recipe].append(future.result())
            print(f"{recipe}, seed {seed}: {runs[recipe][-1]}", file=sys.stderr, flush=True)
    print(f"### {args.dataset}: recipes over seeds {args.seeds} (the prepared split; {jobs} trainings at once, "
          f"{threads} torch thread(s) each; {(time.perf_counter() - started) / 60:.0f} min)\n")
    print(recipes_table(runs, overrides))


if __name__ == "__main__":
    main()
