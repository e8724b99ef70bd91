"""Stage `baselines`: Ridge and Lasso on the simplified input, regularisation by cross validation.

Binary for two classes (MNIST, MR), multi-output (one-vs-rest targets) for more (TREC).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ngsll.baselines import LINEAR_MODELS, fit_linear_baseline
from ngsll.config import section
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
    num_classes = len(read_json(args.data_dir / "features.json")["class_names"])
    task = "binary" if num_classes == 2 else "multiclass"
    fitted = {"task": np.array(task)}
    for name in LINEAR_MODELS:
        model = fit_linear_baseline(
            name, train.z, train.y, task=task, num_classes=num_classes,
            cv_folds=int(section(params, "baselines", "cv_folds")), seed=int(params["seed"]),
        )
        log.info("%s: alpha %.4g, %d non-zero weights", name, model.alpha_, int((model.coef_ != 0).sum()))
        fitted |= {f"{name}_coef": model.coef_, f"{name}_intercept": model.intercept_, f"{name}_alpha": model.alpha_}
    save_arrays(args.out, compressed=False, **fitted)


if __name__ == "__main__":
    main()
