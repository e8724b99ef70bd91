"""Where the time of a batched explanation goes, against the arithmetic floor of the weight generator.

One run measures, on the pipeline's fine checkpoint and the MNIST test split:

* the floor: the WGN's multiply-adds per sample (counted by ``torch.utils.flop_counter``) divided by this
  machine's measured float32 matrix-multiply rate (a large ``torch.mm``, the best this CPU reaches);
* the batched explanation (prediction **and** its top-K weights, ``sparse_explanation``) in ms per sample
  under each setting: ``no_grad`` vs ``inference_mode``, contiguous vs ``channels_last`` memory format,
  1 vs all CPU threads, batch sizes 64 / 256 / 1024, with every variant's answers checked equal to the
  reference (same features, weights within 1e-5): no accuracy change;
* LIME (tabular, 5,000 samples, on a random forest over the 49 cells, as in ``latency.py``) on a few
  digits, for the ratio.

::

    .venv/bin/python benchmarks/explain_profile.py --data-dir data/prepared/mnist --checkpoint models/mnist/fine/k5.pt

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from latency import lime_rows, timed  # benchmarks/latency.py: the same timing and the same LIME setting
from ngsll.checkpoint import model_from_checkpoint
from ngsll.explain import sparse_explanation
from ngsll.model import NGSLL


def matmul_gflops(size: int = 2048) -> float:
    """This machine's float32 matrix-multiply rate in GFLOP/s (multiply and add counted as two)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / (timed(lambda: torch.mm(a, b), 5)[0] / 1000) / 1e9


def generator_flops(model: NGSLL, x: torch.Tensor) -> float:
    """FLOPs (2 per multiply-add) of one weight-generator pass per sample, counted by torch."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.generator(x)
    return counter.get_total_flops() / len(x)


def explain(model: NGSLL, x: torch.Tensor, z: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched prediction with its top-K weights; returns (indices, weights) to compare variants."""
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with context:
        explanation = sparse_explanation(model(x, z), z, model.args.k, model.args.task)
    return explanation.indices, explanation.weights


def profile(model: NGSLL, x: np.ndarray, z: np.ndarray) -> list[tuple[str, float, bool]]:
    """(setting, ms per sample, same answers as the reference) for each variant."""
    threads = torch.get_num_threads()
    reference = explain(model, torch.from_numpy(x[:256]), torch.from_numpy(z[:256]), "no_grad")
    rows = []
    variants = [(mode, memory, count, batch) for mode in ("no_grad", "inference_mode")
                for memory in ("contiguous", "channels_last") for count in sorted({1, threads})
                for batch in (64, 256, 1024)]
    for mode, memory, count, batch in variants:
        torch.set_num_threads(count)
        xs = torch.from_numpy(x[:batch])
        if memory == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            xs = xs.contiguous(memory_format=torch.channels_last)
        zs = torch.from_numpy(z[:batch])
        ms = timed(lambda: explain(model, xs, zs, mode), 7)[0] / batch
        shown = min(batch, 256)
        indices, weights = explain(model, xs[:shown], zs[:shown], mode)
        same = torch.equal(indices, reference[0][:shown]) and torch.allclose(weights, reference[1][:shown], atol=1e-5)
        rows.append((f"{mode}, {memory}, {count} thread(s), batch {batch}", ms, same))
        model = model.to(memory_format=torch.contiguous_format)
    torch.set_num_threads(threads)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared MNIST splits")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a fine checkpoint (k<K>.pt)")
    parser.add_argument("--lime-samples", type=int, default=5, help="digits LIME explains (0: skip LIME)")
    args = parser.parse_args()
    model = model_from_checkpoint(torch.load(args.checkpoint, map_location="cpu", weights_only=True)).eval()
    with np.load(args.data_dir / "test.npz") as stored:
        x = stored["pixels"][:1024].astype(np.float32) / 255.0  # (1024, 1, 28, 28)
        z = stored["z"][:1024].astype(np.float32)  # (1024, d)

    gflops = matmul_gflops()
    flops = generator_flops(model, torch.from_numpy(x[:64]))
    floor_ms = flops / (gflops * 1e9) * 1000
    rows = profile(model, x, z)
    fastest = min(rows, key=lambda row: row[1])
    lime = None
    with contextlib.suppress(ImportError):  # the `benchmarks` extra brings lime
        with np.load(args.data_dir / "train.npz") as stored:
            train_z, train_y = stored["z"][:5000], stored["y"][:5000]
        if args.lime_samples:
            rows_lime = lime_rows(train_z, train_y, z, [model.args.k], args.lime_samples, 5000, seed=0)
            lime = next(iter(rows_lime.values()))[model.args.k][0]
    print(f"\nWGN: {flops / 2e6:.2f} M multiply-adds per sample; float32 matmul on this CPU: {gflops:.1f} GFLOP/s "
          f"({torch.get_num_threads()} threads) -> floor {floor_ms:.4f} ms per sample (K = {model.args.k})\n")
    print("| setting | ms per sample | x floor | same answers |")
    print("|---|---|---|---|")
    for setting, ms, same in rows:
        print(f"| {setting} | {ms:.4f} | {ms / floor_ms:.1f} | {'yes' if same else 'NO'} |")
    print(f"\nfastest: {fastest[0]}, {fastest[1]:.4f} ms per sample ({fastest[1] / floor_ms:.1f} x the floor)")
    if lime is not None:
        print(f"LIME tabular (5,000 samples, random forest): {lime:.1f} ms per explanation = "
              f"{lime / fastest[1]:,.0f} x NGSLL's fastest batched setting")


if __name__ == "__main__":
    main()
