"""Stage `evaluate`: test accuracy (and ROC AUC) per model and K (paper Table 1), explanation timings, pictures.

A regression target gets RMSE, MAE and R² in its own units instead (the models train on it standardised),
and its pictures show values and contributions in those units.

Logs the test metrics and pictures to each model's MLflow run, with the test split as its evaluation
dataset input, and tags each registered fine version with its test accuracy; Ridge, Lasso and the ablation
get one run per K with the same metric names, so the MLflow compare view lines every model up at each K.
Pictures: weight maps over digits (images), test sentences with coloured words (text, paper Figure 5) or
test rows with the contributions of their chosen features (tables, ``rows.png``). Tables also line up the
cross-validated logistic regression (top-K) and the non-sparse gradient-boosted model and EBM.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import numpy as np
import torch

from ngsll.baselines import TREE_MODELS, LinearBaseline, tree_output_key
from ngsll.config import dataset_settings, section
from ngsll.evaluation import (
    METRIC_TITLES, format_table, model_logits, output_metrics, primary_metric, time_explanations,
)
from ngsll.explain import answered_class
from ngsll.importance import answered_weights
from ngsll.plots import (
    accuracy_vs_k_figure, cell_maps, explained_rows_figure, training_curves_figure, weight_overlay_figure,
)
from ngsll.textviz import ExplainedSentence, sentences_page
from ngsll.target import TargetScale
from ngsll.train import TensorData, device_description, pick_device
from ngsll_plugins.tracking import (
    configure, end_runs_on_signal, log_split_inputs, run_model_version, start_run, tag_model_version,
)
from stage_io import (
    load_checkpoint, load_model, load_params, load_split, log, read_json, save_figure, setup_logging, write_json,
    write_text,
)

NGSLL, DENSE, DNN = "NGSLL", "NGSLL (w/o K-HGM)", "DNN"
# The paper's ablation: the top-K |w| over all features, a zero z_j included (DENSE keeps the mask of z_j == 0).
DENSE_ALL = "NGSLL (w/o K-HGM, top-K of all features)"


def linear_models(weights_path: Path) -> dict[str, LinearBaseline]:
    """The baselines stage's linear models (Ridge, Lasso and, for tables, Logistic), by display name."""
    with np.load(weights_path) as stored:
        task = str(stored["task"]) if "task" in stored.files else "binary"
        names = [key[: -len("_coef")] for key in stored.files if key.endswith("_coef")]
        return {
            name.capitalize(): LinearBaseline(
                name, task, stored[f"{name}_coef"], stored[f"{name}_intercept"], float(stored[f"{name}_alpha"])
            )
            for name in names
        }


def tree_outputs(weights_path: Path, task: str) -> dict[str, np.ndarray]:
    """Test-set outputs of the non-sparse table baselines (gradient boosting, EBM) the baselines stage stored,
    by display name: (N_test, C) class probabilities, or (N_test, 1) standardised predictions for regression."""
    with np.load(weights_path) as stored:
        return {name[0].upper() + name[1:]: stored[key]
                for name, key in ((name, tree_output_key(name, task)) for name in TREE_MODELS) if key in stored.files}


class Answers:
    """How a dataset's labels and answers read in figures: class names, or target values in their own units
    (a regression model's weights and contributions scaled by the target's std, so they add up to the value
    minus the training mean)."""

    def __init__(self, class_names: list[str], scale: TargetScale | None) -> None:
        self.class_names, self.scale = class_names, scale

    def label(self, y: float) -> str:
        """A stored label (class index, or standardised target) as text."""
        return self.class_names[int(y)] if self.scale is None else f"{self.scale.name}={self.scale.restore(y):.4g}"

    def answers(self, model, sample: TensorData) -> tuple[np.ndarray, list[str]]:
        """(n, d) answered weights (regression: in target units) and the n answers as text."""
        class_weights, predicted = answered_weights(model, sample.x, sample.z)  # (n, d), (n,)
        if self.scale is None:
            return class_weights, [self.class_names[c] for c in predicted]
        values = self.scale.restore(model_logits(model, sample.x, sample.z)[:, 0])  # (n,)
        return class_weights * self.scale.std, [f"{value:.4g}" for value in values]

    def chosen(self, y: np.ndarray, per_class: int) -> np.ndarray:
        """Indices of the rows shown: the first ``per_class`` of each class, or for regression ``2 *
        per_class`` rows spread over the range of the target (its quantiles)."""
        if self.scale is None:
            return np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(len(self.class_names))])
        order = np.argsort(y, kind="stable")
        return order[np.unique(np.linspace(0, len(y) - 1, min(len(y), 2 * per_class)).round().astype(int))]


def explained_rows(models: dict, ks: list[int], split, chosen: np.ndarray, answers: Answers,
                   names: list[str], device: torch.device) -> list[tuple[str, dict[str, list[tuple[str, float]]]]]:
    """The chosen test rows with, per K, the answer and each chosen feature's contribution z_j w_j."""
    sample = TensorData.from_arrays(split.x[chosen], split.z[chosen], split.y[chosen], device=device)
    rows = [(f"row {split.ids[i]} ({answers.label(split.y[i])})", {}) for i in chosen]
    for k in ks:
        class_weights, answered = answers.answers(models[k], sample)  # (n, d), n answers
        contributions = class_weights * split.z[chosen]  # (n, d)
        for row, (_, by_model) in enumerate(rows):
            picked = np.flatnonzero(class_weights[row])
            by_model[f"NGSLL K={k}: {answered[row]}"] = [
                (f"{names[j]} ({split.z[chosen][row, j]:.2g})", float(contributions[row, j])) for j in picked]
    return rows


def weight_maps(model, data: TensorData, grid: list[int]) -> np.ndarray:
    """(n, rows, cols) signed weights of the answered class the model uses for each sample (dense ones for the
    ablation), summed over channels where z holds one value per channel."""
    with torch.inference_mode():
        output = model(data.x, data.z)
    weights = output.weights if model.args.use_gate else output.dense_weights  # (n, d, C)
    answered = answered_class(output.logits, model.args.task)  # (n,)
    chosen = weights[torch.arange(len(weights), device=weights.device), :, answered]  # (n, d)
    return cell_maps(chosen.cpu().numpy(), grid)


def explained_sentences(models: dict, ks: list[int], split, chosen: np.ndarray, answers: Answers,
                        words: list[str], device: torch.device) -> list[ExplainedSentence]:
    """The chosen test sentences with, per K, the answer and the weights of the chosen words."""
    sentences = [ExplainedSentence(split.texts[i], answers.label(split.y[i])) for i in chosen]
    sample = TensorData.from_arrays(split.x[chosen], split.z[chosen], split.y[chosen], device=device)
    for k in ks:
        class_weights, answered = answers.answers(models[k], sample)  # (n, d), n answers
        for row, sentence in enumerate(sentences):
            chosen_words = {words[j]: float(class_weights[row, j]) for j in np.flatnonzero(class_weights[row])}
            sentence.answers[f"NGSLL K={k}"] = (answered[row], chosen_words)
    return sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--fine-dir", type=Path, required=True, help="folder of fine checkpoints k<K>.pt")
    parser.add_argument("--coarse", type=Path, required=True)
    parser.add_argument("--dnn", type=Path, required=True)
    parser.add_argument("--dense", type=Path, required=True)
    parser.add_argument("--linear", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--accuracy-plot", type=Path, required=True, help="accuracy-versus-K rows (JSON)")
    parser.add_argument("--table", type=Path, required=True, help="Markdown table")
    parser.add_argument("--figures", type=Path, required=True, help="folder for PNG figures (and sentences.html)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    end_runs_on_signal()
    params = load_params(args.params)
    dataset = dataset_settings(params, args.dataset)
    settings, ks = section(params, "evaluate"), dataset.ks
    features = read_json(args.data_dir / "features.json")
    device = pick_device(params.get("device", "auto"))
    test_split = load_split(args.data_dir / "test.npz")
    test = TensorData.from_arrays(test_split.x, test_split.z, test_split.y, device=device)

    checkpoints = {k: load_checkpoint(args.fine_dir / f"k{k}.pt") for k in ks}
    checkpoints |= {"dense": load_checkpoint(args.dense), "dnn": load_checkpoint(args.dnn)}
    models = {key: load_model(checkpoint, device) for key, checkpoint in checkpoints.items()}
    task = models["dnn"].args.task
    scale = TargetScale.from_dict(features["target"]) if task == "regression" else None
    results: dict[str, dict[str, dict[int, float]]] = {}  # metric -> model -> K (0: constant in K) -> value

    def record(name: str, k: int, outputs: np.ndarray, probabilities: bool = False) -> None:
        for metric, value in output_metrics(test_split.y, outputs, task, probabilities, scale).items():
            results.setdefault(metric, {}).setdefault(name, {})[k] = value

    timing: dict[str, dict[str, float]] = {}
    timed = slice(0, int(settings["timing_samples"]))
    for k in ks:
        record(NGSLL, k, model_logits(models[k], test.x, test.z))
        timing[str(k)] = time_explanations(
            models[k], test.x[timed], test.z[timed], int(settings["batch_size"]), int(settings["single_samples"])
        )
        models["dense"].set_gate(k, models["dense"].args.tau)
        record(DENSE, k, model_logits(models["dense"], test.x, test.z))
        if models["dense"].args.mask_zero_features:
            record(DENSE_ALL, k, model_logits(models["dense"], test.x, test.z, mask=torch.zeros_like(test.z).bool()))
    linear = linear_models(args.linear)
    for name, model in linear.items():
        for k in ks:
            record(name, k, model.decision(test_split.z, k))
    record(DNN, 0, model_logits(models["dnn"], test.x, test.z))
    trees = tree_outputs(args.linear, task)
    for name, outputs in trees.items():
        record(name, 0, outputs, probabilities=task != "regression")
    primary = primary_metric(task)

    title = dataset.data["description"]
    table = "\n\n".join(format_table(rows, ks, title=f"{title}: {METRIC_TITLES[metric]}" if i == 0 else
                                      METRIC_TITLES[metric]) for i, (metric, rows) in enumerate(results.items()))
    timing_rows = {
        "NGSLL batched": {k: timing[str(k)]["ms_per_sample_batched"] for k in ks},
        "NGSLL single": {k: timing[str(k)]["ms_per_sample_single"] for k in ks},
    }
    timing_table = format_table(timing_rows, ks, title="ms per sample (prediction + top-K weights)", precision=3)
    report = f"{table}\n\n{timing_table}\n\nDevice: {device_description(device)}\n"
    print(report)
    write_text(args.table, report)
    write_json(args.metrics, {
        **{f"test_{metric}": {name: {str(k): v for k, v in row.items()} for name, row in rows.items()}
           for metric, rows in results.items()},
        **({"task": "regression", "target": scale.to_dict()} if scale else {}),
        "timing_ms_per_sample": timing,
        "device": device_description(device),
        "num_test": len(test),
    })
    write_json(args.accuracy_plot, [
        {"model": name, "k": k, primary: row.get(k, row.get(0))} for name, row in results[primary].items() for k in ks
    ])

    figures = {
        "training_curves.png": training_curves_figure(
            {"coarse": load_checkpoint(args.coarse)["history"]}
            | {f"fine K={k}": checkpoints[k]["history"] for k in ks}
            | {"DNN": checkpoints["dnn"]["history"], "w/o K-HGM": checkpoints["dense"]["history"]}
        ),
        "accuracy_vs_k.png": accuracy_vs_k_figure(results[primary], ks, METRIC_TITLES[primary]),
    }
    per_class = int(settings[{"image": "figure_digits_per_class", "text": "figure_sentences_per_class",
                              "table": "figure_rows_per_class"}[dataset.kind]])
    if dataset.kind == "image":  # a readable figure: at most 12 images across, at least one per class
        per_class = max(1, min(per_class, 12 // max(2, len(features["class_names"]))))
    answers = Answers(features["class_names"], scale)
    chosen = answers.chosen(test_split.y, per_class)
    if dataset.input_kind == "image":
        sample = TensorData.from_arrays(test_split.x[chosen], test_split.z[chosen], test_split.y[chosen], device=device)
        grid = features["image"]["grid"]
        maps = {f"NGSLL K={k}": weight_maps(models[k], sample, grid) for k in ks}
        maps["w/o K-HGM (dense)"] = weight_maps(models["dense"], sample, grid)
        titles = [answers.label(y) if scale else f"{label} ({answers.label(y)})" if label != answers.label(y) else label
                  for label, y in zip(test_split.source_labels[chosen], test_split.y[chosen])]
        figures["weights.png"] = weight_overlay_figure(test_split.x[chosen], maps, titles)
    elif dataset.kind == "table":
        figures["rows.png"] = explained_rows_figure(explained_rows(models, ks, test_split, chosen, answers,
                                                                   features["feature_names"], device))
    else:
        sentences = explained_sentences(models, ks, test_split, chosen, answers, features["feature_names"], device)
        title = f"{dataset.data['description']}: words chosen by NGSLL and their weights"
        write_text(args.figures / "sentences.html", sentences_page(title, sentences, set(features["feature_names"])))
    for name, figure in figures.items():
        save_figure(figure, args.figures / name)
    splits = {"train": (args.data_dir / "train.npz", load_split(args.data_dir / "train.npz")),
              "test": (args.data_dir / "test.npz", test_split)}
    log_to_mlflow(params, dataset, splits, checkpoints, results, primary, timing, linear, ks, args.figures, list(trees))
    log.info("wrote %s, %s and figures under %s", args.metrics, args.table, args.figures)


def log_to_mlflow(params, dataset, splits, checkpoints, results, primary: str, timing, linear, ks, figures: Path,
                  trees: list[str]) -> None:
    """Test metrics, pictures and the test split onto the training runs, the primary test metric (accuracy, or
    R² and RMSE for regression) onto the registered versions; one run per K for Ridge, Lasso and the ablation
    (with the train and test splits), one run for each non-sparse table baseline. Every metric of a model
    (``test_accuracy`` and, where defined, ``test_auc``; ``test_rmse``, ``test_mae``, ``test_r2``) is logged."""

    def test_metrics(name: str, k: int) -> dict[str, float]:
        return {f"test_{metric}": rows[name][k] for metric, rows in results.items() if k in rows.get(name, {})}

    configure(dataset.tracking["experiment"])
    test_input = {"test": splits["test"]}
    registered = dataset.tracking["registered_model"]
    for k in ks:
        run_id = checkpoints[k]["mlflow_run_id"]
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({**test_metrics(NGSLL, k), **timing[str(k)]})
            log_split_inputs(dataset.name, test_input)
            for picture in sorted(figures.iterdir()):
                mlflow.log_artifact(str(picture), artifact_path="figures")
        version = run_model_version(registered, run_id)
        if version is not None:
            tags = test_metrics(NGSLL, k)
            tag_model_version(registered, version, {name: f"{tags[name]:.4f}" for name in
                                                    (f"test_{primary}", "test_rmse") if name in tags})
    with mlflow.start_run(run_id=checkpoints["dnn"]["mlflow_run_id"]):
        mlflow.log_metrics(test_metrics(DNN, 0))
        log_split_inputs(dataset.name, test_input)
    with mlflow.start_run(run_id=checkpoints["dense"]["mlflow_run_id"]):
        log_split_inputs(dataset.name, test_input)
        for name in (DENSE, DENSE_ALL) if DENSE_ALL in results[primary] else (DENSE,):
            for k in ks:
                with mlflow.start_run(run_name=f"{name} K={k}", nested=True):
                    mlflow.log_params({"model": name, "k": k})
                    mlflow.log_metrics(test_metrics(name, k))
    for name, model in linear.items():
        for k in ks:
            with start_run(f"{name} K={k}"):
                mlflow.set_tags({"model": name, "stage": "baselines"})
                mlflow.log_params({"model": name, "k": k, "alpha": model.alpha_, "seed": params["seed"]})
                mlflow.log_metrics(test_metrics(name, k))
                log_split_inputs(dataset.name, splits)
    for name in trees:
        with start_run(name):
            mlflow.set_tags({"model": name, "stage": "baselines"})
            mlflow.log_params({"model": name, "seed": params["seed"]})
            mlflow.log_metrics(test_metrics(name, 0))
            log_split_inputs(dataset.name, splits)


if __name__ == "__main__":
    main()
