"""Batch explanations (per-sample sparse weights + NormLIME) single-process versus on Ray Data.

Times the explain stage's NormLIME pass for each fine model over a prepared split, once in this process
(``ngsll.importance.accumulate_normlime``) and once on a local Ray with ``--ray-cpus`` CPUs (or the
cluster at RAY_ADDRESS), checks the two results are equal, and prints a Markdown table::

    .venv/bin/python benchmarks/explain_engines.py --data-dir data/prepared/mnist --fine-dir models/mnist/fine

Ray's times include its task scheduling but not ``ray.init`` (reported apart). Timings are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ngsll.checkpoint import model_from_checkpoint
from ngsll.importance import accumulate_normlime
from ngsll.train import TensorData


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--fine-dir", type=Path, required=True)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    from ngsll_plugins.ray_batch import init_ray, ray_normlime

    with np.load(args.data_dir / f"{args.split}.npz") as stored:
        x = stored["tokens"] if "tokens" in stored.files else stored["pixels"].astype(np.float32) / 255.0
        z, y = stored["z"], stored["y"]
    num_classes = int(y.max()) + 1
    data = TensorData.from_arrays(x, z, y)
    started = time.perf_counter()
    init_ray(num_cpus=args.ray_cpus)
    startup = time.perf_counter() - started
    rows = []
    for k in args.ks:
        checkpoint = torch.load(args.fine_dir / f"k{k}.pt", weights_only=True)
        started = time.perf_counter()
        local = accumulate_normlime(model_from_checkpoint(checkpoint), data, num_classes, args.batch_size)
        local_seconds = time.perf_counter() - started
        started = time.perf_counter()
        remote = ray_normlime(checkpoint, x, z, num_classes, blocks=args.blocks, batch_size=args.batch_size,
                              actors=max(1, args.ray_cpus // 2), cpus_per_actor=1.0)
        ray_seconds = time.perf_counter() - started
        equal = np.allclose(local.global_importance_, remote.normlime.global_importance_, rtol=1e-5, atol=1e-8)
        rows.append(f"| K = {k} | {len(z)} | {local_seconds:.2f} | {ray_seconds:.2f} | {remote.blocks} | {equal} |")
    print(f"\n{torch.get_num_threads()} torch threads; local Ray with {args.ray_cpus} CPUs "
          f"(ray.init took {startup:.1f} s, not counted)\n")
    print("| fine model | samples | single process [s] | Ray Data [s] | blocks | equal |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
