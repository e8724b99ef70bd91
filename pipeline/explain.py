"""Stage `explain`: NormLIME global and class-specific importance from every fine model's sparse
weights, beside SP-LIME, mean |w| and the DNN's average input gradient, and a Keep-And-Retrain
faithfulness check of each ranking (random included; for a regression target: a ridge regression's test RMSE,
standardised units, and NormLIME's one output is the target). Images and text alike: over cells, the pictures are
signed maps on each class's average image; over words, the top words of each class with their signed
mean weight (``top_words.md`` and ``top_words.png``); over a table's features, the same as
``top_features.md`` and ``top_features.png``. ``reference_profile.json`` is the served K's NormLIME
state over the split (importance, per-class selection frequencies, class shares): the reference that
explanation monitoring (``python -m ngsll_plugins.monitor``) compares the served explanations with.

``explain.engine: ray`` computes the NormLIME passes on Ray Data instead (same numbers; a local Ray, or
the cluster at ``explain.ray.address`` / ``RAY_ADDRESS``), optionally writing each sample's sparse
weights as Parquet shards under ``<out-dir>/weights_k<K>/``.

Keep-And-Retrain twice: the cheap proxy above at every K and every fraction, and at the served K the NormLIME
paper's own (``explain.retrain_classifier``, images and text): the removed cells or words blanked in x, the DNN
retrained on them, with random rankings averaged over several draws (:mod:`ngsll.kar`). The default pipeline
bounds it (fractions, epochs and training samples in params.yaml, stated in the report and the card)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import mlflow
import numpy as np

from ngsll.config import DatasetSettings, dataset_settings, reference_phase, section, task_of
from ngsll.evaluation import format_table
from ngsll.importance import (
    GradientView, accumulate_normlime, input_gradient_view, keep_and_retrain, lime_local_weights, table_gradient_view,
    text_gradient_view, top_features_by_class, top_features_markdown,
)
from ngsll.kar import image_blanker, keep_and_retrain_classifier, text_blanker
from ngsll.monitoring import ExplanationProfile
from ngsll.normlime import NormLIME
from ngsll.plots import cell_maps, faithfulness_figure, top_features_figure, weight_overlay_figure
from ngsll.table import TableEncoder
from ngsll.text import TextEncoder
from ngsll.train import TensorData, pick_device
from ngsll_plugins.tracking import configure, end_runs_on_signal
from stage_io import (
    load_checkpoint, load_model, load_params, load_split, log, read_json, save_figure, setup_logging, write_json,
    write_text,
)

ENGINES = ("local", "ray")
TOP_WORDS = 10  # words per class in the text tables and charts


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


def gradient_view(dataset: DatasetSettings, dnn_path: Path, data: TensorData, features: dict, data_dir: Path,
                  batch_size: int, device) -> GradientView:
    """The DNN's mean input gradient over the cells (images), the words (text) or the features (tables) of z."""
    model = load_model(dnn_path, device)
    if dataset.kind == "image":
        return input_gradient_view(model, data, features["image"]["grid"], batch_size)
    if dataset.kind == "table":
        encoder = TableEncoder.from_dict(read_json(data_dir / "encoder.json"))
        return table_gradient_view(model, data, encoder.category_features(), batch_size)
    encoder = TextEncoder.from_dict(read_json(data_dir / "encoder.json"))
    return text_gradient_view(model, data, encoder.token_features(), batch_size)


def lime_rankings(dataset: DatasetSettings, settings: dict, dnn_path: Path, split, features: dict, names: list,
                  classes: list, seed: int, device) -> dict[str, np.ndarray]:
    """NormLIME over LIME explanations of the DNN, where enabled and supported (binary grayscale square grids)."""
    if not settings["lime"]["enabled"]:
        return {}
    image = features.get("image") or {}
    rows, cols = image.get("grid", [0, 1])
    if dataset.kind != "image" or len(classes) != 2 or image.get("channels") != 1 or rows != cols:
        log.warning("explain.lime is implemented for binary grayscale images on a square grid; skipped for %s",
                    dataset.name)
        return {}
    count = min(int(settings["lime"]["samples"]), len(split.y))
    lime_weights, lime_predicted = lime_local_weights(
        load_model(dnn_path, device), split.x[:count, 0], rows, int(settings["lime"]["num_samples"]), seed
    )
    log.info("LIME explained %d %s images of the DNN", count, settings["split"])
    return {"NormLIME over LIME (DNN)": NormLIME(len(names), len(classes)).update(lime_weights, lime_predicted).global_importance_}


def image_pictures(split, normlimes: dict[str, NormLIME], global_maps: dict[str, np.ndarray], shown_k: str,
                   features: dict, out_dir: Path) -> None:
    """Signed NormLIME maps over each class's average image, and every method's global map at the served K."""
    grid, classes = features["image"]["grid"], features["class_names"]
    if classes:
        averages = np.stack([split.x[split.y == c].mean(axis=0) if (split.y == c).any() else np.zeros(split.x.shape[1:])
                             for c in range(len(classes))])  # (classes, C, H, W)
        titles = [f"class {c} (average)" for c in classes]
    else:  # regression: one output, over the average image
        averages, titles = split.x.mean(axis=0)[None], [f"{features['target']['name']} (all images)"]
    class_maps = {f"NormLIME signed, {k}": cell_maps(n.class_signed_, grid) for k, n in normlimes.items()}
    save_figure(weight_overlay_figure(averages, class_maps, titles), out_dir / "class_maps.png")
    method_maps = {name: cell_maps(vector[None], grid) for name, vector in global_maps.items()}
    save_figure(weight_overlay_figure(split.x.mean(axis=0)[None], method_maps, [f"all images, {shown_k}"]),
                out_dir / "global_maps.png")


def rankings_at_k(importance: dict, k: int | str) -> dict[str, np.ndarray]:
    """The rankings of features the stage compares at one K, read from its ``importance`` dict (as written to
    ``importance.json``): name -> (d,) importance, higher is more important, named and ordered as in its
    tables. The random ranking is not among them (it is drawn, not stored)."""
    at_k = importance["by_k"][str(k)]
    rankings = {"NormLIME": at_k["normlime"], "SP-LIME": at_k["sp_lime"], "mean abs weight": at_k["mean_abs"],
                "abs mean gradient (DNN)": np.abs(np.asarray(importance["dnn_mean_gradient"]))}
    if "lime_normlime_dnn" in importance:
        rankings["NormLIME over LIME (DNN)"] = importance["lime_normlime_dnn"]
    return {name: np.asarray(values, dtype=float) for name, values in rankings.items()}


def retrained_classifier_gains(dataset: DatasetSettings, settings: dict, rankings: dict[str, np.ndarray],
                               features: dict, data_dir: Path, dnn_path: Path, test: TensorData, seed: int,
                               device) -> dict[str, dict[float, float]] | None:
    """The NormLIME paper's Keep-And-Retrain at the served K (see :mod:`ngsll.kar`), bounded by
    ``explain.retrain_classifier``; None where it is off or the kind has no blanking in x (tables)."""
    retrain = settings["retrain_classifier"]
    if not retrain["enabled"] or dataset.kind == "table":
        return None
    if dataset.kind == "image":
        blank = image_blanker(features["image"]["grid"], features["image"]["cell_values"])
    else:
        blank = text_blanker(TextEncoder.from_dict(read_json(data_dir / "encoder.json")).token_features())
    rng = np.random.default_rng(seed)
    splits = {}
    for name in ("train", "validation"):
        split = load_split(data_dir / f"{name}.npz")
        rows = rng.choice(len(split.y), size=min(int(retrain["samples"]), len(split.y)), replace=False)
        splits[name] = TensorData.from_arrays(split.x[rows], split.z[rows], split.y[rows], device=device)
    phase = reference_phase(dataset.train, 1)
    epochs = int(retrain["max_epochs"])
    config = dataclasses.replace(phase, max_epochs=epochs, patience=min(phase.patience, epochs))
    return keep_and_retrain_classifier(
        rankings, blank, load_checkpoint(dnn_path)["model_args"], splits["train"], splits["validation"], test,
        [float(f) for f in retrain["fractions"]], config, seed=seed, random_draws=int(retrain["random_draws"]),
        progress=True)


def top_feature_pictures(normlime: NormLIME, names: list[str], classes: list[str], shown_k: str, out_dir: Path,
                         noun: str = "words") -> dict:
    """The top words (text) or features (tables) of each predicted class (NormLIME importance, signed mean
    weight) as a table and a chart: ``top_<noun>.md`` and ``top_<noun>.png``."""
    tables = top_features_by_class(normlime, names, classes, TOP_WORDS)
    write_text(out_dir / f"top_{noun}.md", top_features_markdown(tables, f", {shown_k}"))
    save_figure(top_features_figure(tables, title=f"top {noun} by predicted class, {shown_k}"),
                out_dir / f"top_{noun}.png")
    return tables


def gains_table(rankings: dict[str, dict[float, float]], title: str) -> str:
    """Markdown: a row per ranking, a column per removed fraction."""
    fractions = list(next(iter(rankings.values())))
    return format_table({name: {round(100 * f): g for f, g in curve.items()} for name, curve in rankings.items()},
                        [round(100 * f) for f in fractions], title=title, column="{}% removed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
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
    dataset = dataset_settings(params, args.dataset)
    settings, ks = section(params, "explain"), dataset.ks
    if settings["engine"] not in ENGINES:
        raise SystemExit(f"explain.engine must be one of {ENGINES}, got {settings['engine']!r}")
    features = read_json(args.data_dir / "features.json")
    task = "regression" if task_of(features) == "regression" else "classification"
    names = features["feature_names"]
    classes = [features["target"]["name"]] if task == "regression" else features["class_names"]  # NormLIME's outputs
    device = pick_device(params.get("device", "auto"))
    split = load_split(args.data_dir / f"{settings['split']}.npz")
    data = TensorData.from_arrays(split.x, split.z, split.y, device=device)

    gradient = gradient_view(dataset, args.dnn, data, features, args.data_dir, int(settings["batch_size"]), device)
    log.info("DNN linear surrogate of the mean gradient agrees with the DNN on %.3f of %s",
             gradient.surrogate_agreement, settings["split"])
    rng = np.random.default_rng(int(params["seed"]))
    train = load_split(args.data_dir / "train.npz")
    subset = rng.choice(len(train.y), size=min(int(settings["retrain_samples"]), len(train.y)), replace=False)
    random_ranking = rng.permutation(len(names)).astype(float)
    extra_rankings = lime_rankings(dataset, settings, args.dnn, split, features, names, classes, int(params["seed"]), device)

    importance: dict[str, dict] = {"kind": dataset.kind, "feature_names": names, "class_names": classes,
                                   "split": settings["split"], "dnn_mean_gradient": gradient.mean_gradient.tolist(),
                                   "dnn_class_gradient": gradient.class_gradient.tolist(), "by_k": {}}
    if extra_rankings:
        importance["lime_normlime_dnn"] = extra_rankings["NormLIME over LIME (DNN)"].tolist()
    gains: dict[str, dict[str, dict[float, float]]] = {}
    normlimes: dict[str, NormLIME] = {}
    global_maps: dict[str, dict[str, np.ndarray]] = {}
    fractions = [float(f) for f in settings["fractions"]]
    for k in ks:
        normlime = fine_normlime(args.fine_dir / f"k{k}.pt", data, split, len(classes), settings, device,
                                 args.out_dir / f"weights_k{k}")
        normlimes[f"K={k}"] = normlime
        importance["by_k"][str(k)] = {
            "normlime": normlime.global_importance_.tolist(),
            "normlime_by_class": dict(zip(classes, normlime.class_importance_.tolist())),
            "signed": normlime.global_signed_.tolist(),
            "signed_by_class": dict(zip(classes, normlime.class_signed_.tolist())),
            "usage_by_class": dict(zip(classes, normlime.usage_.tolist())),
            "sp_lime": normlime.sp_lime_.tolist(),
            "mean_abs": normlime.mean_abs_.tolist(),
        }
        rankings = {**rankings_at_k(importance, k), "random": random_ranking}
        gains[f"K={k}"] = keep_and_retrain(rankings, train.z[subset], train.y[subset], split.z, split.y,
                                           fractions=fractions, task=task)
        global_maps[f"K={k}"] = {name: ranking for name, ranking in rankings.items() if name != "random"}
        log.info("K=%d: NormLIME and Keep-And-Retrain done", k)
    served = int(dataset.serve["k"])
    shown_k = f"K={served}" if served in ks else f"K={ks[0]}"
    retrained = retrained_classifier_gains(dataset, settings, global_maps[shown_k], features, args.data_dir, args.dnn,
                                           data, int(params["seed"]), device)  # global_maps: no random ranking

    args.out_dir.mkdir(parents=True, exist_ok=True)
    if dataset.kind == "image":
        image_pictures(split, normlimes, global_maps[shown_k], shown_k, features, args.out_dir)
    elif dataset.kind == "table":
        importance["top_features_by_class"] = top_feature_pictures(normlimes[shown_k], names, classes, shown_k,
                                                                   args.out_dir, noun="features")
    else:
        importance["top_words_by_class"] = top_feature_pictures(normlimes[shown_k], names, classes, shown_k,
                                                                args.out_dir)
    write_json(args.out_dir / "importance.json", importance)
    reference = ExplanationProfile(names, classes, normlimes[shown_k], dataset.serve["model_name"],
                                   f"{settings['split']} split, {shown_k}", features.get("image"))
    write_json(args.out_dir / "reference_profile.json", reference.to_dict())  # what explanation monitoring compares with
    gain_name = "test RMSE gain (standardised target)" if task == "regression" else "test error gain"
    save_figure(faithfulness_figure(gains, gain_name), args.out_dir / "faithfulness.png")
    proxy = "a ridge regression" if task == "regression" else "a logistic regression"
    tables = [gains_table(rankings, f"{gain_name} of {proxy} on the kept z (proxy), {panel}")
              for panel, rankings in gains.items()]
    if retrained is not None:
        retrain = settings["retrain_classifier"]
        blanked = "cells" if dataset.kind == "image" else "words"
        tables.append(gains_table(retrained, (
            f"{gain_name} of the DNN retrained on x with the removed {blanked} blanked (the NormLIME paper's "
            f"Keep-And-Retrain), {shown_k}; bounded: {retrain['samples']} training samples, at most "
            f"{retrain['max_epochs']} epochs per retraining")))
    write_text(args.out_dir / "faithfulness.md", "\n\n".join(tables) + "\n")

    half = min(fractions, key=lambda f: abs(f - 0.5))
    metrics = {"dnn_surrogate_agreement": gradient.surrogate_agreement, "error_gain_at_50": {}, "normlime_beats_random_at_50": {}}
    for panel, rankings in gains.items():
        metrics["error_gain_at_50"][panel] = {name: curve[half] for name, curve in rankings.items()}
        metrics["normlime_beats_random_at_50"][panel] = bool(rankings["NormLIME"][half] < rankings["random"][half])
    if retrained is not None:
        at = min(retrained["NormLIME"], key=lambda f: abs(f - 0.5))
        metrics["retrained_dnn_error_gain"] = {"k": served, "fraction": at,
                                               **{name: curve[at] for name, curve in retrained.items()}}
    write_json(args.metrics, metrics)
    print("\n\n".join(tables))

    configure(dataset.tracking["experiment"])
    for k in ks:
        with mlflow.start_run(run_id=load_checkpoint(args.fine_dir / f"k{k}.pt")["mlflow_run_id"]):
            mlflow.log_metrics({"normlime_error_gain_at_50": gains[f"K={k}"]["NormLIME"][half],
                                "random_error_gain_at_50": gains[f"K={k}"]["random"][half]})
            if retrained is not None and k == served:
                measured = metrics["retrained_dnn_error_gain"]
                random_mean = next(value for name, value in measured.items() if name.startswith("random"))
                mlflow.log_metrics({"retrained_dnn_normlime_error_gain": measured["NormLIME"],
                                    "retrained_dnn_random_error_gain": random_mean})
            mlflow.log_artifacts(str(args.out_dir), artifact_path="explain")


if __name__ == "__main__":
    main()
