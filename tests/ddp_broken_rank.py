"""The training stage under torchrun with one rank broken on purpose (used by tests/test_distributed.py).

``NGSLL_TEST_BROKEN_RANK`` names the rank; ``NGSLL_TEST_FAILURE`` says how it breaks when it first
validates: ``raise`` (an exception, as a bug or a full disk would) or ``hang`` (it stops taking part in
collectives, as a wedged device or a lost node would). Every other rank runs the real stage untouched.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))

import ngsll.train  # noqa: E402
import train as stage  # noqa: E402  (pipeline/train.py)


def broken_evaluate(*args, **kwargs):
    if os.environ["NGSLL_TEST_FAILURE"] == "hang":
        time.sleep(3600)
    raise RuntimeError(f"injected failure on rank {os.environ['RANK']}")


if __name__ == "__main__":
    if os.environ["RANK"] == os.environ["NGSLL_TEST_BROKEN_RANK"]:
        ngsll.train.evaluate = broken_evaluate
    stage.main()
