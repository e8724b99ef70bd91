"""Stage `baselines`: Ridge and Lasso on the simplified input, regularisation by cross validation.

Binary for two classes (MNIST, MR), multi-output (one-vs-rest targets) for more (TREC), the (standardised)
target itself for regression. Tables also get a cross-validated logistic regression (classes only; top-K
like the others) and two non-sparse models, a gradient-boosted model and an Explainable Boosting Machine,
whose test-set class probabilities (regression: predictions) are stored beside the weights
(``<name>_test_probabilities`` / ``<name>_test_predictions``) for the evaluation table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import json

import pandas as pd

from ngsll.baselines import fit_linear_baseline, fit_tree_baselines, linear_models_for, tree_output_key
from ngsll.config import section, task_of
from stage_io import load_params, load_split, log, read_json, save_arrays, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared splits")
    parser.add_argument("--out", type=Path, required=True, help="fitted weights (.npz)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    params = load_params(args.params)
    train = load_split(args.data_dir / "train.npz")
    features = read_json(args.data_dir / "features.json")
    num_classes = len(features["class_names"])
    task = task_of(features)
    table = features.get("kind") == "table"
    fitted = {"task": np.array(task)}
    for name in linear_models_for(table, task):
        model = fit_linear_baseline(
            name, train.z, train.y, task=task, num_classes=num_classes,
            cv_folds=int(section(params, "baselines", "cv_folds")), seed=int(params["seed"]),
        )
        log.info("%s: alpha %.4g, %d non-zero weights", name, model.alpha_, int((model.coef_ != 0).sum()))
        fitted |= {f"{name}_coef": model.coef_, f"{name}_intercept": model.intercept_, f"{name}_alpha": model.alpha_}
    if table:
        test = load_split(args.data_dir / "test.npz")
        frames = [records_frame(split.records, features["table"]) for split in (train, test)]
        for name, outputs in fit_tree_baselines(train.z, train.y, frames[0], test.z, frames[1],
                                                seed=int(params["seed"]), task=task).items():
            if task == "regression":  # in standardised units here; evaluate reports the target's own
                rmse = float(np.sqrt(((outputs[:, 0] - test.y) ** 2).mean()))
                log.info("%s: test RMSE %.4f (standardised target)", name, rmse)
            else:
                log.info("%s: test accuracy %.4f", name, float((outputs.argmax(axis=1) == test.y).mean()))
            fitted[tree_output_key(name, task)] = outputs
    save_arrays(args.out, compressed=False, **fitted)


def records_frame(records: list[str], table: dict) -> pd.DataFrame:
    """The input columns of a split's JSON records, numbers as floats and categories as strings."""
    frame = pd.DataFrame.from_records([json.loads(record) for record in records], columns=table["columns"])
    for column in table["numeric"]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in table["categorical"]:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


if __name__ == "__main__":
    main()
