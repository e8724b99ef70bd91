"""Training-stage wall time: one process versus PyTorch DDP under torchrun, on the prepared data.

Runs the real stage script (``pipeline/train.py``, as ``dvc repro`` does) once per process count with a
copy of ``params.yaml`` whose ``distributed.nproc_per_node`` is set (the stage then relaunches itself
under torchrun), writes into a temporary folder with its own MLflow store, and prints a Markdown table::

    .venv/bin/python benchmarks/ddp_training.py --stage coarse --epochs 2 --nprocs 1 2

Wall time includes process start-up, data loading and (for N > 1) torchrun's rendezvous; seconds per
epoch come from the stage's own history. ``--epochs`` caps ``max_epochs`` (and patience) so runs are
comparable. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PHASES = {"coarse": "coarse", "dnn": "dnn", "dense": "dnn"}


def run_stage(stage: str, processes: int, epochs: int, data_dir: Path, checked: Path, params: dict,
              folder: Path) -> dict:
    """One stage run; wall seconds, mean seconds per epoch, epochs run, best validation loss."""
    params = json.loads(json.dumps(params))  # a deep copy
    params["distributed"]["nproc_per_node"] = processes
    params["defaults"]["image"]["train"][PHASES[stage]].update(max_epochs=epochs, patience=epochs)
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, str(REPO / "pipeline/train.py"), "--dataset", "mnist", "--stage", stage,
               "--data-dir", str(data_dir.resolve()),
               "--checked", str(checked.resolve()), "--out", str(folder / f"{stage}.pt"),
               "--history", str(folder / "history.json"), "--params", str(folder / "params.yaml")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True)
    wall = time.perf_counter() - started
    history = json.loads((folder / "history.json").read_text())
    return {"wall": wall, "epoch_seconds": sum(row["seconds"] for row in history) / len(history),
            "epochs": len(history), "val_loss": min(row["val_loss"] for row in history)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(PHASES), default="coarse")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data/prepared/mnist")
    parser.add_argument("--checked", type=Path, default=REPO / "reports/mnist/validation/prepared.json")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text())
    rows = []
    with tempfile.TemporaryDirectory(prefix="ngsll-ddp-") as scratch:
        for processes in args.nprocs:
            print(f"--- {args.stage}: {processes} process(es), {args.epochs} epochs", flush=True)
            result = run_stage(args.stage, processes, args.epochs, args.data_dir, args.checked, params,
                               Path(scratch) / f"n{processes}")
            rows.append((processes, result))
    baseline = rows[0][1]["wall"]
    print(f"\nstage {args.stage}, {args.epochs} epochs, {os.cpu_count()} CPUs, device {params.get('device')}\n")
    print("| processes | wall time (s) | s / epoch | epochs | best val loss | wall vs first row |")
    print("|---|---|---|---|---|---|")
    for processes, result in rows:
        print(f"| {processes} | {result['wall']:.1f} | {result['epoch_seconds']:.1f} | {result['epochs']} | "
              f"{result['val_loss']:.4f} | {result['wall'] / baseline:.2f}x |")


if __name__ == "__main__":
    main()
