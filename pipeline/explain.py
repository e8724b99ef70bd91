"""Stage `explain`: NormLIME global and class-specific importance from every fine model's sparse
weights, beside SP-LIME, mean |w| and the DNN's average input gradient, and a Keep-And-Retrain
faithfulness check of each ranking (random included).

``explain.engine: ray`` computes the NormLIME passes on Ray Data instead (same numbers; a local Ray, or
the cluster at ``explain.ray.address`` / ``RAY_ADDRESS``), optionally writing each sample's sparse
weights as Parquet shards under ``<out-dir>/weights_k<K>/``."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import numpy as np

from ngsll.config import section
from ngsll.evaluation import format_table
from ngsll.importance import accumulate_normlime, input_gradient_view, keep_and_retrain, lime_local_weights
from ngsll.normlime import NormLIME
from ngsll.plots import faithfulness_figure, weight_overlay_figure
from ngsll.train import TensorData, pick_device
from ngsll_plugins.tracking import configure, end_runs_on_signal
from stage_io import (
    load_checkpoint, load_model, load_params, load_split, log, read_json, save_figure, setup_logging, write_json,
    write_text,
)

ENGINES = ("local", "ray")


def fine_normlime(checkpoint_path: Path, data: TensorData, split, num_classes: int, settings: dict, device,
                  weights_dir: Path) -> NormLIME:
    """NormLIME of one fine model over the split, in this process or on Ray Data (``explain.engine``)."""
    if settings["engine"] == "local":
        return accumulate_normlime(load_model(checkpoint_path, device), data, num_classes, int(settings["batch_size"]))
    from ngsll_plugins.ray_batch import init_ray, ray_normlime

    ray_settings = settings["ray"]
    init_ray(address=ray_settings.get("address"))
    result = ray_normlime(
        load_checkpoint(checkpoint_path), split.x, split.z, num_classes, blocks=int(ray_settings["blocks"]),
        batch_size=int(settings["batch_size"]), actors=int(ray_settings["actors"]),
        cpus_per_actor=float(ray_settings["cpus_per_actor"]),
        weights_dir=weights_dir if ray_settings["write_weights"] else None,
    )
    log.info("Ray: NormLIME of %s merged from %d blocks", checkpoint_path.name, result.blocks)
    return result.normlime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--fine-dir", type=Path, required=True, help="folder of fine checkpoints k<K>.pt")
    parser.add_argument("--dnn", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True, help="importance JSON, tables and figures")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    end_runs_on_signal()
    params = load_params(args.params)
    settings, ks = section(params, "explain"), [int(k) for k in section(params, "train", "ks")]
    if settings["engine"] not in ENGINES:
        raise SystemExit(f"explain.engine must be one of {ENGINES}, got {settings['engine']!r}")
    cells = int(section(params, "data", "cells"))
    features = read_json(args.data_dir / "features.json")
    names, classes = features["feature_names"], features["class_names"]
    device = pick_device(params.get("device", "auto"))
    split = load_split(args.data_dir / f"{settings['split']}.npz")
    data = TensorData.from_arrays(split.x, split.z, split.y, device=device)

    gradient = input_gradient_view(load_model(args.dnn, device), data, cells, int(settings["batch_size"]))
    log.info("DNN linear surrogate sign(z^T g) agrees with the DNN on %.3f of %s", gradient.surrogate_agreement, settings["split"])
    rng = np.random.default_rng(int(params["seed"]))
    train = load_split(args.data_dir / "train.npz")
    subset = rng.choice(len(train.y), size=min(int(settings["retrain_samples"]), len(train.y)), replace=False)
    random_ranking = rng.permutation(len(names)).astype(float)
    extra_rankings = {}
    if settings["lime"]["enabled"]:  # LIME of the DNN, aggregated by NormLIME; slow, hence capped
        count = min(int(settings["lime"]["samples"]), len(split.y))
        lime_weights, lime_predicted = lime_local_weights(
            load_model(args.dnn, device), split.x[:count, 0], cells, int(settings["lime"]["num_samples"]), int(params["seed"])
        )
        lime_normlime = NormLIME(len(names), len(classes)).update(lime_weights, lime_predicted)
        extra_rankings["NormLIME over LIME (DNN)"] = lime_normlime.global_importance_
        log.info("LIME explained %d %s digits of the DNN", count, settings["split"])

    importance: dict[str, dict] = {"feature_names": names, "class_names": classes, "split": settings["split"],
                                   "dnn_mean_gradient": gradient.mean_gradient.tolist(), "by_k": {}}
    gains: dict[str, dict[str, dict[float, float]]] = {}
    class_maps, global_maps = {}, {}
    for k in ks:
        normlime = fine_normlime(args.fine_dir / f"k{k}.pt", data, split, len(classes), settings, device,
                                 args.out_dir / f"weights_k{k}")
        importance["by_k"][str(k)] = {
            "normlime": normlime.global_importance_.tolist(),
            "normlime_by_class": dict(zip(classes, normlime.class_importance_.tolist())),
            "signed": normlime.global_signed_.tolist(),
            "signed_by_class": dict(zip(classes, normlime.class_signed_.tolist())),
            "usage_by_class": dict(zip(classes, normlime.usage_.tolist())),
            "sp_lime": normlime.sp_lime_.tolist(),
            "mean_abs": normlime.mean_abs_.tolist(),
        }
        rankings = {"NormLIME": normlime.global_importance_, "SP-LIME": normlime.sp_lime_,
                    "mean abs weight": normlime.mean_abs_, "abs mean gradient (DNN)": np.abs(gradient.mean_gradient),
                    **extra_rankings, "random": random_ranking}
        gains[f"K={k}"] = keep_and_retrain(rankings, train.z[subset], train.y[subset], split.z, split.y,
                                           fractions=[float(f) for f in settings["fractions"]])
        class_maps[f"NormLIME signed, K={k}"] = normlime.class_signed_.reshape(-1, cells, cells)
        global_maps[f"K={k}"] = {name: ranking for name, ranking in rankings.items() if name != "random"}

    args.out_dir.mkdir(parents=True, exist_ok=True)
    if extra_rankings:
        importance["lime_normlime_dnn"] = extra_rankings["NormLIME over LIME (DNN)"].tolist()
    write_json(args.out_dir / "importance.json", importance)
    average_digits = np.stack([split.x[split.y == c, 0].mean(axis=0) for c in range(len(classes))])  # (C, 28, 28)
    save_figure(weight_overlay_figure(average_digits, class_maps, [f"class {c} (average digit)" for c in classes]),
                args.out_dir / "class_maps.png")
    shown_k = f"K={int(section(params, 'serve', 'k'))}" if int(section(params, "serve", "k")) in ks else f"K={ks[0]}"
    method_maps = {name: vector.reshape(1, cells, cells) for name, vector in global_maps[shown_k].items()}
    save_figure(weight_overlay_figure(split.x[:, 0].mean(axis=0)[None], method_maps, [f"all digits, {shown_k}"]),
                args.out_dir / "global_maps.png")
    save_figure(faithfulness_figure(gains), args.out_dir / "faithfulness.png")
    fractions = [float(f) for f in settings["fractions"]]
    tables = [format_table({name: {round(100 * f): g for f, g in curve.items()} for name, curve in rankings.items()},
                           [round(100 * f) for f in fractions], title=f"test error gain, {panel}",
                           column="{}% removed")
              for panel, rankings in gains.items()]
    write_text(args.out_dir / "faithfulness.md", "\n\n".join(tables) + "\n")

    half = min(fractions, key=lambda f: abs(f - 0.5))
    metrics = {"dnn_surrogate_agreement": gradient.surrogate_agreement, "error_gain_at_50": {}, "normlime_beats_random_at_50": {}}
    for panel, rankings in gains.items():
        metrics["error_gain_at_50"][panel] = {name: curve[half] for name, curve in rankings.items()}
        metrics["normlime_beats_random_at_50"][panel] = bool(rankings["NormLIME"][half] < rankings["random"][half])
    write_json(args.metrics, metrics)
    print("\n\n".join(tables))

    configure(section(params, "tracking", "experiment"))
    for k in ks:
        with mlflow.start_run(run_id=load_checkpoint(args.fine_dir / f"k{k}.pt")["mlflow_run_id"]):
            mlflow.log_metrics({"normlime_error_gain_at_50": gains[f"K={k}"]["NormLIME"][half],
                                "random_error_gain_at_50": gains[f"K={k}"]["random"][half]})
            mlflow.log_artifacts(str(args.out_dir), artifact_path="explain")


if __name__ == "__main__":
    main()
