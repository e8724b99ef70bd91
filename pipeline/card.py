"""Stage `card`: the model card of one dataset's served model (Markdown with Hugging Face front matter, and
self-contained HTML), rendered from pipeline/templates/model_card.md.j2 with what the pipeline measured.

The template adapts to the kind (pixel maps for images; top-word tables and the Figure-5 sentences for
text; top-feature tables and explained rows for tables) and to the task (one section per class for multi-class
models; R², RMSE and MAE in the target's units for regression)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import mlflow
import numpy as np
import torch

from ngsll.card import render_html, render_markdown
from ngsll.checkpoint import model_from_checkpoint
from ngsll.config import DatasetSettings, dataset_settings, task_of
from ngsll.evaluation import METRIC_TITLES, format_table, primary_metric
from ngsll.explain import predict_explain
from ngsll.quality import listed_ids
from ngsll.target import TargetScale
from ngsll.train import kept_epoch
from ngsll_plugins.run_context import version_tags
from ngsll_plugins.tracking import configure, end_runs_on_signal
from stage_io import load_checkpoint, load_params, load_split, log, read_json, setup_logging, write_text

TOP_WORDS_PER_CLASS = 5  # words per class in the card's class sections


def phase_row(name: str, checkpoint: dict) -> dict:
    history, phase = checkpoint["history"], checkpoint["phase"]
    world_size = int(checkpoint.get("world_size", 1))
    device = checkpoint["device"] + (f" x {world_size} DDP processes" if world_size > 1 else "")
    return {"name": name, "k": phase["k"], "tau": phase["tau"], "optimizer": phase["optimizer"], "lr": phase["lr"],
            "epochs": len(history), "best_epoch": kept_epoch(history, phase.get("monitor", "val_loss"))["epoch"],
            "seconds": sum(row["seconds"] for row in history), "device": device}


def examples(checkpoint: dict, split, features: dict, per_class: int = 2) -> list[dict]:
    """Local explanations of the first test samples of each class (regression: four test samples spread over
    the target's range): what was shown, the answer, the features."""
    model = model_from_checkpoint(checkpoint)
    classes = features["class_names"]
    target = TargetScale.from_dict(features["target"]) if task_of(features) == "regression" else None
    if target is None:
        per_class = 1 if len(classes) > 4 else per_class
        chosen = [int(i) for c in range(len(classes)) for i in (split.y == c).nonzero()[0][:per_class]]
    else:
        order = np.argsort(split.y, kind="stable")
        chosen = [int(order[i]) for i in np.unique(np.linspace(0, len(order) - 1, 4).round().astype(int))]
    x, z = torch.from_numpy(split.x[chosen]), torch.from_numpy(split.z[chosen])
    answers = predict_explain(model, x, z, features["feature_names"], classes, target)
    if hasattr(split, "records"):
        shown = [split.records[i] for i in chosen]
    elif hasattr(split, "texts"):
        shown = [split.texts[i] for i in chosen]
    else:
        shown = [str(split.source_labels[i]) for i in chosen]
    def truth(y) -> str:
        return classes[int(y)] if target is None else f"{target.restore(float(y)):.4g}"

    return [{"input": text, "truth": truth(split.y[i]),
             "label": a["label"] if target is None else f"{a['value']:.4g}",
             "logit": a["logits"][a["label"]] if "logits" in a else a["logit"],
             "features": ", ".join(f"{w['feature']} ({w['contribution']:+.2f})" for w in a["weights"]) or "none"}
            for i, text, a in zip(chosen, shown, answers)]


def class_sections(importance: dict, k: int, features: dict) -> list[dict]:
    """Per class: the features NormLIME ranks highest for the samples predicted as that class."""
    by_k = importance["by_k"][str(k)]
    names = features["feature_names"]
    sections = []
    for name in importance["class_names"]:  # a regression model's one output: the target
        scores, signed = by_k["normlime_by_class"][name], by_k["signed_by_class"][name]
        order = sorted(range(len(names)), key=lambda j: -scores[j])[:TOP_WORDS_PER_CLASS]
        sections.append({"name": name, "top": ", ".join(f"{names[j]} ({signed[j]:+.3f})" for j in order if scores[j] > 0)
                         or "no feature was ever chosen"})
    return sections


def source_line(info: dict) -> str:
    """Where the data came from, in words: the wheel and member, or the user's path and its format."""
    if info.get("source") == "wheel":
        return f"`{info['member']}` of the wheel `{info['wheel']}` (sha256 `{info['sha256'][:12]}…`)"
    return f"`{info['path']}` ({info.get('format', info['source'])})"


def data_versions(tags: dict[str, str]) -> dict[str, str]:
    """DVC output path -> md5 from the run-context tags (``dvc.data.<path>``)."""
    return {key.removeprefix("dvc.data."): value for key, value in tags.items() if key.startswith("dvc.data.")}


def context_for(dataset: DatasetSettings, params: dict, args: argparse.Namespace) -> dict:
    serve, ks = dataset.serve, dataset.ks
    k = int(serve["k"])
    fine, coarse = load_checkpoint(args.fine_dir / f"k{k}.pt"), load_checkpoint(args.coarse)
    features = read_json(args.data_dir / "features.json")
    evaluation = read_json(args.evaluation)
    explain = read_json(args.explain_metrics)
    importance = read_json(args.explain_dir / "importance.json")
    info = read_json(args.info)
    task = fine["model_args"]["task"]
    metrics = {metric: {name: {int(key): v for key, v in row.items()}
                        for name, row in evaluation[f"test_{metric}"].items()}
               for metric in METRIC_TITLES if f"test_{metric}" in evaluation}  # accuracy, auc | r2, rmse, mae
    primary = primary_metric(task)
    timing = evaluation["timing_ms_per_sample"]
    splits = {name: load_split(args.data_dir / f"{name}.npz") for name in ("train", "validation", "test")}
    tags = version_tags()
    classes = features["class_names"]
    return {
        "kind": dataset.kind,
        "task": task,
        "target": features.get("target"),
        "model": {"name": serve["model_name"], "k": fine["model_args"]["k"], "version": serve["version"],
                  "registered_name": dataset.tracking["registered_model"], **fine["model_args"]},
        "version": {"commit": tags.get("ngsll.git.commit"), "mlflow_run_id": fine.get("mlflow_run_id"),
                    "data": {path: md5 for path, md5 in data_versions(tags).items()
                             if re.search(rf"/{re.escape(dataset.name)}(\.json|/|$)", path)}},
        "dataset": {"name": dataset.name, "description": dataset.data["description"], "seed": params["seed"],
                    "source": source_line(info), "notes": info.get("notes", []),
                    "classes": classes, "num_features": len(features["feature_names"]),
                    "representation": features["representation"], "image": features.get("image"),
                    **{name: len(split.y) for name, split in splits.items()}},
        "validation": [
            {"name": path.stem, "verdict": "passed" if report["success"] else "FAILED",
             "total": sum(len(b["results"]) for b in report["results"].values()),
             "passed": sum(r["success"] for b in report["results"].values() for r in b["results"]),
             "dropped": report.get("dropped"), "dropped_ids": listed_ids(report.get("dropped"))}
            for path, report in ((p, read_json(p)) for p in args.validation)
        ],
        "training": [phase_row("coarse", coarse), phase_row(f"fine (K={fine['model_args']['k']})", fine)],
        "evaluation": {"tables": [format_table(rows, ks, title=METRIC_TITLES[metric])
                                  for metric, rows in metrics.items()],
                       "primary": primary, "primary_title": METRIC_TITLES[primary],
                       "ngsll_primary": {key: metrics[primary]["NGSLL"][key] for key in ks}},
        "interpretation": {"examples": examples(fine, splits["test"], features),
                           "classes": class_sections(importance, k, features),
                           "surrogate_agreement": explain.get("dnn_surrogate_agreement"),
                           "retrained": explain.get("retrained_dnn_error_gain"),
                           "faithfulness_table": (args.explain_dir / "faithfulness.md").read_text(),
                           "top_words": next((path.read_text() for path in (args.explain_dir / "top_words.md",
                                                                           args.explain_dir / "top_features.md")
                                              if path.exists()), None)},
        "latency": {"table": format_table(
            {"batched (256)": {key: timing[str(key)]["ms_per_sample_batched"] for key in ks},
             "one at a time": {key: timing[str(key)]["ms_per_sample_single"] for key in ks}},
            ks, title=f"ms per sample, {evaluation['device']}")},
        "serve": serve,
        "monitor": {**params.get("monitor", {}),
                    "reference_samples": read_json(args.explain_dir / "reference_profile.json")["samples"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--template", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--coarse", type=Path, required=True)
    parser.add_argument("--fine-dir", type=Path, required=True, help="folder of fine checkpoints (serve.k is carded)")
    parser.add_argument("--evaluation", type=Path, required=True, help="evaluate's metrics JSON")
    parser.add_argument("--explain-dir", type=Path, required=True, help="explain's folder (importance, tables)")
    parser.add_argument("--explain-metrics", type=Path, required=True, help="explain's metrics JSON")
    parser.add_argument("--validation", type=Path, nargs="+", required=True, help="GX result JSON files")
    parser.add_argument("--info", type=Path, required=True, help="fetch's provenance JSON (source, conversions)")
    parser.add_argument("--out", type=Path, required=True, help="model_card.md (the .html goes beside it)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    end_runs_on_signal()
    params = load_params(args.params)
    dataset = dataset_settings(params, args.dataset)
    context = context_for(dataset, params, args)
    card = render_markdown(args.template.read_text(), context)
    write_text(args.out, card)
    html_path = args.out.with_suffix(".html")
    write_text(html_path, render_html(card, args.out.parent, f"Model card: {context['model']['name']}"))
    log.info("wrote %s and %s", args.out, html_path)
    run_id = context["version"]["mlflow_run_id"]
    if run_id:
        configure(dataset.tracking["experiment"])
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(args.out), artifact_path="card")
            mlflow.log_artifact(str(html_path), artifact_path="card")


if __name__ == "__main__":
    main()
