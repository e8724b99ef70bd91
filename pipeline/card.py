"""Stage `card`: the model card (Markdown with Hugging Face front matter, and self-contained HTML),
rendered from pipeline/templates/model_card.md.j2 with what the pipeline measured."""

from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import torch

from ngsll.card import render_html, render_markdown
from ngsll.checkpoint import model_from_checkpoint
from ngsll.config import section
from ngsll.evaluation import format_table
from ngsll.explain import predict_explain
from ngsll_plugins.run_context import version_tags
from ngsll_plugins.tracking import configure, end_runs_on_signal
from stage_io import load_checkpoint, load_params, load_split, log, read_json, setup_logging, write_text


def phase_row(name: str, checkpoint: dict) -> dict:
    history, phase = checkpoint["history"], checkpoint["phase"]
    world_size = int(checkpoint.get("world_size", 1))
    device = checkpoint["device"] + (f" x {world_size} DDP processes" if world_size > 1 else "")
    return {"name": name, "k": phase["k"], "tau": phase["tau"], "optimizer": phase["optimizer"], "lr": phase["lr"],
            "epochs": len(history), "best_epoch": min(history, key=lambda row: row["val_loss"])["epoch"],
            "seconds": sum(row["seconds"] for row in history), "device": device}


def examples(checkpoint: dict, split, features: dict, per_class: int = 2) -> list[dict]:
    model = model_from_checkpoint(checkpoint)
    chosen = [i for c in (0, 1) for i in (split.y == c).nonzero()[0][:per_class]]
    x, z = torch.from_numpy(split.x[chosen]), torch.from_numpy(split.z[chosen])
    answers = predict_explain(model, x, z, features["feature_names"], features["class_names"])
    return [{"digit": int(split.digits[i]), "label": a["label"], "logit": a["logit"],
             "cells": ", ".join(f"{w['feature']} ({w['contribution']:+.2f})" for w in a["weights"])}
            for i, a in zip(chosen, answers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--template", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--coarse", type=Path, required=True)
    parser.add_argument("--fine", type=Path, required=True, help="the served fine checkpoint")
    parser.add_argument("--evaluation", type=Path, required=True, help="evaluate's metrics JSON")
    parser.add_argument("--explain", type=Path, required=True, help="explain's metrics JSON")
    parser.add_argument("--faithfulness", type=Path, required=True, help="explain's faithfulness table")
    parser.add_argument("--validation", type=Path, nargs="+", required=True, help="GX result JSON files")
    parser.add_argument("--out", type=Path, required=True, help="model_card.md (the .html goes beside it)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    end_runs_on_signal()
    params = load_params(args.params)
    serve, ks = section(params, "serve"), [int(k) for k in section(params, "train", "ks")]
    fine, coarse = load_checkpoint(args.fine), load_checkpoint(args.coarse)
    features = read_json(args.data_dir / "features.json")
    evaluation, explain = read_json(args.evaluation), read_json(args.explain)
    accuracy = {name: {int(k): v for k, v in row.items()} for name, row in evaluation["test_accuracy"].items()}
    timing = evaluation["timing_ms_per_sample"]
    splits = {name: load_split(args.data_dir / f"{name}.npz") for name in ("train", "validation", "test")}
    tags = version_tags()

    context = {
        "model": {"name": serve["model_name"], "k": fine["model_args"]["k"], "version": serve["version"],
                  "registered_name": section(params, "tracking", "registered_model"), **fine["model_args"]},
        "version": {"commit": tags.get("ngsll.git.commit"), "mlflow_run_id": fine.get("mlflow_run_id"),
                    "data": {k.removeprefix("dvc.data."): v for k, v in tags.items() if k.startswith("dvc.data.")}},
        "dataset": {"name": "mnist", "description": "MNIST, binary labels 0-4 vs 5-9", "seed": params["seed"],
                    **{name: len(split.y) for name, split in splits.items()}},
        "validation": [
            {"name": path.stem, "verdict": "passed" if report["success"] else "FAILED",
             "total": sum(len(b["results"]) for b in report["results"].values()),
             "passed": sum(r["success"] for b in report["results"].values() for r in b["results"])}
            for path, report in ((p, read_json(p)) for p in args.validation)
        ],
        "training": [phase_row("coarse", coarse), phase_row(f"fine (K={fine['model_args']['k']})", fine)],
        "evaluation": {"table": format_table(accuracy, ks, title="test accuracy"),
                       "ngsll_accuracy": {k: accuracy["NGSLL"][k] for k in ks}},
        "interpretation": {"examples": examples(fine, splits["test"], features),
                           "surrogate_agreement": explain.get("dnn_surrogate_agreement"),
                           "faithfulness_table": args.faithfulness.read_text()},
        "latency": {"table": format_table(
            {"batched (256)": {k: timing[str(k)]["ms_per_sample_batched"] for k in ks},
             "one at a time": {k: timing[str(k)]["ms_per_sample_single"] for k in ks}},
            ks, title=f"ms per sample, {evaluation['device']}")},
        "serve": serve,
    }
    card = render_markdown(args.template.read_text(), context)
    write_text(args.out, card)
    html_path = args.out.with_suffix(".html")
    write_text(html_path, render_html(card, args.out.parent, f"Model card: {serve['model_name']}"))
    log.info("wrote %s and %s", args.out, html_path)
    if fine.get("mlflow_run_id"):
        configure(section(params, "tracking", "experiment"))
        with mlflow.start_run(run_id=fine["mlflow_run_id"]):
            mlflow.log_artifact(str(args.out), artifact_path="card")
            mlflow.log_artifact(str(html_path), artifact_path="card")


if __name__ == "__main__":
    main()
