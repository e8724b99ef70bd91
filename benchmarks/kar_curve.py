"""The NormLIME paper's Keep-And-Retrain in full: every removed fraction, the whole training split, the DNN's own
training budget.

The ``explain`` stage runs the same measurement bounded (``explain.retrain_classifier`` in params.yaml: one
fraction, 2,000 training samples, 2 epochs per retraining), so that ``make run`` stays within its budget. This
runs it unbounded, with the stage's own code (``retrained_classifier_gains`` in ``pipeline/explain.py``, over
:func:`ngsll.kar.keep_and_retrain_classifier`): for each ranking the stage computed at K (NormLIME, SP-LIME,
mean |w|, the DNN's mean input gradient; NormLIME over LIME where the stage ran it) and for each removed
fraction, the least important cells or words are blanked in x, the DNN is retrained on the blanked training
split (early stopping on the blanked validation split, as ``train.dnn`` says) and scored on the blanked test
split; random rankings are averaged over ``--random-draws`` permutations. Rankings that remove the same
features share one retraining.

It reads what ``dvc repro explain@<dataset>`` wrote (``reports/<dataset>/explain/importance.json``, the
prepared split, ``models/<dataset>/dnn.pt``) and writes nothing to DVC or MLflow:

    .venv/bin/python benchmarks/kar_curve.py --dataset trec --out-dir reports/benchmarks/kar_trec

Prints a Markdown table, the test error gain per ranking (rows) and removed fraction (columns) over the error
with nothing removed; ``--out-dir`` also keeps it with the curves as a figure and JSON. Cost: one DNN training
per distinct removed set, up to 1 + (rankings + draws) x fractions of them (TREC: about 40 s each on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipeline"))

from explain import gains_table, rankings_at_k, retrained_classifier_gains  # noqa: E402
from ngsll.config import dataset_settings, reference_phase, section  # noqa: E402
from ngsll.plots import faithfulness_figure  # noqa: E402
from ngsll.train import TensorData, device_description, pick_device  # noqa: E402
from stage_io import load_params, load_split, read_json, save_figure, write_json, write_text  # noqa: E402

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def rankings_from_importance(importance: dict[str, Any], k: int) -> dict[str, np.ndarray]:
    """The rankings the explain stage retrains on, read back from its ``importance.json`` at ``k``: name ->
    (d,) importance (higher is more important), named and ordered as in the stage's tables."""
    if str(k) not in importance["by_k"]:
        raise SystemExit(f"importance.json has no K={k}; it holds K in {sorted(importance['by_k'], key=int)}")
    return rankings_at_k(importance, k)


def unbounded_settings(explain: dict[str, Any], fractions: list[float], samples: int, max_epochs: int,
                       random_draws: int) -> dict[str, Any]:
    """The ``explain`` section with its ``retrain_classifier`` bounds replaced by this run's."""
    return {**explain, "retrain_classifier": {"enabled": True, "fractions": fractions, "samples": samples,
                                              "max_epochs": max_epochs, "random_draws": random_draws}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="an image or text dataset under datasets in params.yaml")
    parser.add_argument("--k", type=int, help="whose rankings (default: the served K)")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--samples", type=int, help="training and validation samples (default: all)")
    parser.add_argument("--max-epochs", type=int, help="per retraining (default: the DNN's own, train.dnn)")
    parser.add_argument("--random-draws", type=int, default=5)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out-dir", type=Path, help="also write kar_curve.md, .json and .png here")
    args = parser.parse_args()

    params = load_params(args.params)
    dataset = dataset_settings(params, args.dataset)
    if dataset.kind == "table":
        raise SystemExit("a table has nothing to blank in x: its Keep-And-Retrain is the proxy in the explain report")
    data_dir, explain_dir = REPO / "data" / "prepared" / args.dataset, REPO / "reports" / args.dataset / "explain"
    dnn_path = REPO / "models" / args.dataset / "dnn.pt"
    if not (explain_dir / "importance.json").exists() or not dnn_path.exists():
        raise SystemExit(f"no explain output for {args.dataset}: run `dvc repro explain@{args.dataset}` first")
    k = args.k if args.k is not None else int(dataset.serve["k"])
    rankings = rankings_from_importance(read_json(explain_dir / "importance.json"), k)
    samples = args.samples or int(read_json(REPO / "metrics" / args.dataset / "data.json")["samples"]["train"])
    max_epochs = args.max_epochs or reference_phase(dataset.train, k).max_epochs
    settings = unbounded_settings(section(params, "explain"), args.fractions, samples, max_epochs, args.random_draws)

    device = pick_device(params.get("device", "auto"))
    test = load_split(data_dir / "test.npz")
    started = time.perf_counter()
    gains = retrained_classifier_gains(dataset, settings, rankings, read_json(data_dir / "features.json"), data_dir,
                                       dnn_path, TensorData.from_arrays(test.x, test.z, test.y, device=device),
                                       int(params["seed"]), device)
    minutes = (time.perf_counter() - started) / 60
    blanked = "cells" if dataset.kind == "image" else "words"
    title = (f"{args.dataset}, K={k}: test error gain of the DNN retrained on x with the removed {blanked} blanked "
             f"({samples} training samples, at most {max_epochs} epochs per retraining, {args.random_draws} random "
             f"draws; {device_description(device)}, {minutes:.0f} min)")
    table = gains_table(gains, title)
    print(table)
    if args.out_dir:
        write_text(args.out_dir / "kar_curve.md", table + "\n")
        write_json(args.out_dir / "kar_curve.json", {"dataset": args.dataset, "k": k, "samples": samples,
                                                     "max_epochs": max_epochs, "random_draws": args.random_draws,
                                                     "minutes": minutes, "gains": gains})  # fractions become string keys)
        save_figure(faithfulness_figure({f"{args.dataset}, K={k}, DNN retrained": gains}), args.out_dir / "kar_curve.png")


if __name__ == "__main__":
    main()
