"""Stage `evaluate`: test accuracy per model and K (paper Table 1), explanation timings, pictures."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ngsll.baselines import LINEAR_MODELS, LinearBaseline
from ngsll.config import section
from ngsll.evaluation import format_table, time_explanations
from ngsll.plots import training_curves_figure, weight_overlay_figure
from ngsll.train import TensorData, device_description, evaluate, pick_device
from stage_io import load_checkpoint, load_model, load_params, load_split, log, save_figure, setup_logging, write_json


def linear_accuracies(weights_path: Path, z: np.ndarray, y: np.ndarray, ks: list[int]) -> dict[str, dict[int, float]]:
    rows = {}
    with np.load(weights_path) as stored:
        for name in LINEAR_MODELS:
            model = LinearBaseline(name, "binary", stored[f"{name}_coef"], stored[f"{name}_intercept"], float(stored[f"{name}_alpha"]))
            rows[name.capitalize()] = {k: float((model.predict(z, k) == y).mean()) for k in ks}
    return rows


def weight_maps(model, data: TensorData, cells: int) -> np.ndarray:
    """(n, cells, cells) signed weights the model uses for each sample (dense ones for the ablation)."""
    with torch.inference_mode():
        output = model(data.x, data.z)
    weights = output.weights if model.args.use_gate else output.dense_weights  # (n, d, 1)
    return weights[..., 0].cpu().numpy().reshape(-1, cells, cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--fine-dir", type=Path, required=True, help="folder of fine checkpoints k<K>.pt")
    parser.add_argument("--coarse", type=Path, required=True)
    parser.add_argument("--dnn", type=Path, required=True)
    parser.add_argument("--dense", type=Path, required=True)
    parser.add_argument("--linear", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--table", type=Path, required=True, help="Markdown table")
    parser.add_argument("--figures", type=Path, required=True, help="folder for PNG figures")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    params = load_params(args.params)
    settings, ks = section(params, "evaluate"), [int(k) for k in section(params, "train", "ks")]
    cells = int(section(params, "data", "cells"))
    device = pick_device(params.get("device", "auto"))
    test_split = load_split(args.data_dir / "test.npz")
    test = TensorData.from_arrays(test_split.x, test_split.z, test_split.y, device=device)

    accuracy: dict[str, dict[int, float]] = {"NGSLL": {}, "NGSLL (w/o K-HGM)": {}}
    timing: dict[str, dict[str, float]] = {}
    fine_models = {k: load_model(args.fine_dir / f"k{k}.pt", device) for k in ks}
    timed = slice(0, int(settings["timing_samples"]))
    for k, model in fine_models.items():
        accuracy["NGSLL"][k] = evaluate(model, test)["accuracy"]
        timing[str(k)] = time_explanations(
            model, test.x[timed], test.z[timed], int(settings["batch_size"]), int(settings["single_samples"])
        )
    dense = load_model(args.dense, device)
    for k in ks:
        dense.set_gate(k, dense.args.tau)
        accuracy["NGSLL (w/o K-HGM)"][k] = evaluate(dense, test)["accuracy"]
    accuracy |= linear_accuracies(args.linear, test_split.z, test_split.y, ks)
    accuracy["DNN"] = {0: evaluate(load_model(args.dnn, device), test)["accuracy"]}

    table = format_table(accuracy, ks, title="binary MNIST test accuracy")
    timing_rows = {
        "NGSLL batched": {k: timing[str(k)]["ms_per_sample_batched"] for k in ks},
        "NGSLL single": {k: timing[str(k)]["ms_per_sample_single"] for k in ks},
    }
    timing_table = format_table(timing_rows, ks, title="ms per sample (prediction + top-K weights)", precision=3)
    report = f"{table}\n\n{timing_table}\n\nDevice: {device_description(device)}\n"
    print(report)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(report)
    write_json(args.metrics, {
        "test_accuracy": {name: {str(k): v for k, v in row.items()} for name, row in accuracy.items()},
        "timing_ms_per_sample": timing,
        "device": device_description(device),
        "num_test": len(test),
    })

    per_class = int(settings["figure_digits_per_class"])
    chosen = np.concatenate([np.flatnonzero(test_split.y == c)[:per_class] for c in (0, 1)])
    sample = TensorData.from_arrays(test_split.x[chosen], test_split.z[chosen], test_split.y[chosen], device=device)
    maps = {f"NGSLL K={k}": weight_maps(model, sample, cells) for k, model in fine_models.items()}
    maps["w/o K-HGM (dense)"] = weight_maps(dense, sample, cells)
    titles = [f"digit {d}" for d in test_split.digits[chosen]]
    save_figure(weight_overlay_figure(test_split.x[chosen, 0], maps, titles), args.figures / "weights.png")
    histories = {"coarse": load_checkpoint(args.coarse)["history"]}
    histories |= {f"fine K={k}": load_checkpoint(args.fine_dir / f"k{k}.pt")["history"] for k in ks}
    save_figure(training_curves_figure(histories), args.figures / "training_curves.png")
    log.info("wrote %s, %s and figures under %s", args.metrics, args.table, args.figures)


if __name__ == "__main__":
    main()
