"""Stage `validate_raw`: Great Expectations gate on the fetched arrays before anything is built on them.

Row counts, label set, image shape, pixel range 0-255, no NaN, unique ids. On failure: a short summary
on stderr, the full result as JSON and HTML, and a non-zero exit that stops `dvc repro`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ngsll.config import section
from ngsll.quality import raw_checks, raw_image_frame, run_checks
from stage_io import finish_gate, load_params, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="raw arrays (.npz) from fetch")
    parser.add_argument("--report", type=Path, required=True, help="validation result JSON")
    parser.add_argument("--html", type=Path, required=True, help="static HTML report")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    settings = section(load_params(args.params), "validate", "raw")

    batches = {}
    with np.load(args.raw) as stored:
        for split in ("train", "test"):
            frame = raw_image_frame(stored[f"{split}_images"], stored[f"{split}_labels"], split)
            checks = raw_checks(
                labels=list(settings["labels"]), min_rows=int(settings["min_rows"][split]),
                max_rows=int(settings["max_rows"][split]), height=28, width=28,
            )
            batches[split] = (frame, checks)
    report = run_checks(batches, suite_name="raw")
    finish_gate(report, args.report, args.html, "validate_raw")


if __name__ == "__main__":
    main()
