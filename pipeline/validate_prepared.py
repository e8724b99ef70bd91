"""Stage `validate_prepared`: Great Expectations gate on the prepared splits before training.

Every split non-empty, z in [0, 1] (text word counts: >= 0; tables: finite standardised values and one-hots), stored masks equal to (z == 0), the expected
number of features, labels in the class set (a regression target: present in every row; standardised by
`prepare`), each class's share within ``validate.class_share_tolerance``
of ``validate.class_share`` where one is given (MNIST: half the digits are 5-9), train and validation ids
disjoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ngsll.config import dataset_settings, task_of
from ngsll.errors import ConfigError
from ngsll.quality import disjoint_checks, prepared_checks, prepared_frame, run_checks
from stage_io import finish_gate, load_params, one_line_errors, read_json, setup_logging

SPLITS = ("train", "validation", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared splits")
    parser.add_argument("--report", type=Path, required=True, help="validation result JSON")
    parser.add_argument("--html", type=Path, required=True, help="static HTML report")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    dataset = dataset_settings(load_params(args.params), args.dataset)
    features = read_json(args.data_dir / "features.json")
    classes = features["class_names"]
    regression = task_of(features) == "regression"
    expected_shares = dataset.validate.get("class_share") or {}
    if regression and expected_shares:
        raise ConfigError(f"datasets.{args.dataset}.validate.class_share is for classes; the task is regression")
    unknown = sorted(set(expected_shares) - set(classes))
    if unknown:
        raise ConfigError(f"datasets.{args.dataset}.validate.class_share names {unknown}, which are not classes {classes}")
    tolerance = float(dataset.validate.get("class_share_tolerance", 0.1))
    z_max = None if dataset.kind == "table" or (dataset.kind == "text" and dataset.data.get("counts")) else 1.0
    z_min = None if dataset.kind == "table" else 0.0  # standardised columns lie on both sides of 0
    frames, batches = {}, {}
    for split in SPLITS:
        with np.load(args.data_dir / f"{split}.npz") as stored:
            frames[split] = frame = prepared_frame(stored["z"], stored["mask"], stored["y"], stored["ids"], split)
        checks = prepared_checks(num_features=len(features["feature_names"]), class_share=None, tolerance=0.0,
                                 num_classes=None if regression else len(classes), z_max=z_max, z_min=z_min)
        batches[split] = (frame, checks)
        for name, share in expected_shares.items():  # one indicator column per class with an expected share
            index = classes.index(name)
            indicator = pd.DataFrame({"id": frame["id"], "label": (frame["label"] == index).astype(int)})
            batches[f"{split} share of {name}"] = (indicator, [("ExpectColumnMeanToBeBetween", {
                "column": "label", "min_value": float(share) - tolerance, "max_value": float(share) + tolerance})])
    batches["train+validation"] = (pd.concat([frames["train"], frames["validation"]]), disjoint_checks())
    report = run_checks(batches, suite_name=f"prepared_{args.dataset}")
    finish_gate(report, args.report, args.html, f"validate_prepared ({args.dataset})")


if __name__ == "__main__":
    with one_line_errors("validate_prepared"):
        main()
