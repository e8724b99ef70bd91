"""Stage `validate_prepared`: Great Expectations gate on the prepared splits before training.

Every split non-empty, z in [0, 1] (text word counts: >= 0), stored masks equal to (z == 0), the expected
number of features, labels in the class set, class balance within tolerance (MNIST), train and
validation ids disjoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ngsll.config import dataset_settings, section
from ngsll.quality import disjoint_checks, prepared_checks, prepared_frame, run_checks
from stage_io import finish_gate, load_params, read_json, setup_logging

SPLITS = ("train", "validation", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="mnist", help="mnist or a name under text.datasets")
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared splits")
    parser.add_argument("--report", type=Path, required=True, help="validation result JSON")
    parser.add_argument("--html", type=Path, required=True, help="static HTML report")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    params = load_params(args.params)
    dataset = dataset_settings(params, args.dataset)
    if dataset.input_kind == "image":
        settings, data = section(params, "validate", "prepared"), dataset.data
        checks = prepared_checks(
            num_features=int(data["cells"]) ** 2, class_share=float(settings["class_share"]),
            tolerance=float(settings["class_share_tolerance"]), num_classes=len(data["class_names"]),
        )
    else:
        features = read_json(args.data_dir / "features.json")
        checks = prepared_checks(
            num_features=len(features["feature_names"]), class_share=None, tolerance=0.0,
            num_classes=len(features["class_names"]), z_max=None if dataset.data["counts"] else 1.0,
        )
    frames = {}
    for split in SPLITS:
        with np.load(args.data_dir / f"{split}.npz") as stored:
            frames[split] = prepared_frame(stored["z"], stored["mask"], stored["y"], stored["ids"], split)
    batches = {split: (frame, checks) for split, frame in frames.items()}
    batches["train+validation"] = (pd.concat([frames["train"], frames["validation"]]), disjoint_checks())
    report = run_checks(batches, suite_name=f"prepared_{args.dataset}")
    finish_gate(report, args.report, args.html, f"validate_prepared ({args.dataset})")


if __name__ == "__main__":
    main()
