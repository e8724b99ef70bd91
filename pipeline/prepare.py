"""Stage `prepare`: binary labels, the seeded validation split, and both representations.

x = pixels / 255 (stored as uint8 pixels), z = 7x7 block means; plus the feature and class names.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from ngsll.config import section
from ngsll.data.mnist import binary_mnist_splits, check_mnist_arrays
from ngsll.simplify import cell_names
from stage_io import atomic_output, load_params, log, require_passed, save_split, setup_logging, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="raw MNIST arrays (.npz) from fetch")
    parser.add_argument("--checked", type=Path, required=True, help="validate_raw's report (must have passed)")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for train/validation/test .npz")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    require_passed(args.checked)
    params = load_params(args.params)
    data = section(params, "data")

    with np.load(args.raw) as stored:
        arrays = check_mnist_arrays({name: stored[name] for name in stored.files})
    splits = binary_mnist_splits(arrays, int(data["num_validation"]), int(params["seed"]), int(data["cells"]))
    with atomic_output(args.out_dir / "metadata.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "id", "digit", "label"])
        for name, split in splits.items():
            save_split(args.out_dir / f"{name}.npz", split)
            writer.writerows(zip([name] * len(split.y), split.ids.tolist(), split.digits.tolist(), split.y.tolist()))
            log.info("%s: %d samples, class-1 share %.3f", name, len(split.y), float(split.y.mean()))
    write_json(args.out_dir / "features.json", {
        "feature_names": cell_names(int(data["cells"])),
        "class_names": list(data["class_names"]),
        "representation": {"x": "pixels / 255, shape (1, 28, 28)", "z": f"{data['cells']}x{data['cells']} block means"},
    })


if __name__ == "__main__":
    main()
