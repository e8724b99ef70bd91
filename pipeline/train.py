"""Stages `train_coarse`, `train_fine`, `train_dnn` and `train_dense`: one training phase each.

* coarse: NGSLL with train.coarse (K = 10, tau = 1, Adam) from scratch.
* fine:   NGSLL from the coarse checkpoint with the target K, tau = 0.1, momentum SGD at
          lr_ratio x the coarse phase's final learning rate.
* dnn:    the same CNN emitting class logits (the non-interpretable upper bound).
* dense:  NGSLL without K-HGM (dense weights in training; top-K |w| at evaluation).

MLflow: each fine stage is a parent run ``NGSLL K=<k>`` with two nested runs, ``coarse`` (replayed
from the coarse checkpoint it starts from) and ``fine`` (logged live); the fine model is logged as a
pyfunc and registered (images; text models are logged as checkpoints). The DNN and the ablation log
one run each. Run ids go into the checkpoints.

``--dataset`` picks the params sections: ``mnist`` (default) or a text dataset under ``text.datasets``.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import mlflow

from ngsll import build_model
from ngsll.checkpoint import checkpoint_dict, model_from_checkpoint
from ngsll.config import coarse_phase, dataset_settings, fine_phase, model_args, reference_phase
from ngsll.train import device_description, pick_device, seed_everything, train_phase
from ngsll_plugins.tracking import (
    configure, epoch_logger, log_device, log_phase, log_pyfunc_model, phase_params, start_run,
)
from stage_io import (
    load_checkpoint, load_params, load_split, load_tensors, log, read_json, require_passed, save_checkpoint,
    setup_logging, write_json,
)

STAGES = ("coarse", "fine", "dnn", "dense")
RUN_NAMES = {"dnn": "DNN", "dense": "NGSLL (w/o K-HGM)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--dataset", default="mnist", help="mnist or a name under text.datasets")
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared splits")
    parser.add_argument("--checked", type=Path, required=True, help="validate_prepared's report (must have passed)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch metrics JSON")
    parser.add_argument("--k", type=int, help="target K (fine stage)")
    parser.add_argument("--coarse", type=Path, help="coarse checkpoint (fine stage)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    require_passed(args.checked)
    params = load_params(args.params)
    settings = dataset_settings(params, args.dataset)
    features = read_json(args.data_dir / "features.json")
    seed = int(params["seed"])
    device = pick_device(params.get("device", "auto"))
    log.info("stage %s on %s", args.stage, device_description(device))
    seed_everything(seed)

    coarse = None
    if args.stage == "coarse":
        model, phase = build_model(model_args(settings, features)), coarse_phase(settings.train)
    elif args.stage == "fine":
        if args.k is None or args.coarse is None:
            parser.error("the fine stage needs --k and --coarse")
        coarse = load_checkpoint(args.coarse)
        model = model_from_checkpoint(coarse)
        phase = fine_phase(settings.train, args.k, float(coarse["final_lr"]))
    elif args.stage == "dnn":
        model = build_model(model_args(settings, features, kind="dnn"))
        phase = reference_phase(settings.train, k=model.args.k)
    else:
        model = build_model(model_args(settings, features, use_gate=False))
        phase = reference_phase(settings.train, k=model.args.k)
    model.to(device)
    train = load_tensors(args.data_dir / "train.npz", device)
    validation = load_tensors(args.data_dir / "validation.npz", device)
    log.info("%s: %s", args.stage, phase)

    tracked = args.stage != "coarse"  # the coarse phase is logged under every fine run that starts from it
    tracking = settings.tracking
    if tracked:
        configure(tracking["experiment"])
    run_name = f"NGSLL K={args.k}" if args.stage == "fine" else RUN_NAMES.get(args.stage, args.stage)
    with start_run(run_name) if tracked else nullcontext() as parent:
        this_phase = phase_params(vars(phase), model.args.to_dict(), seed, device_description(device))
        if tracked:
            mlflow.set_tags({"model": run_name.split(" K=")[0], "stage": args.stage})
            mlflow.log_params({"model": run_name.split(" K=")[0], "dataset": args.dataset, "seed": seed})
            if args.stage == "fine":  # the DNN has no K; the ablation logs one nested run per K at evaluation
                mlflow.log_param("k", phase.k)
            mlflow.log_artifact(str(args.params))
        if coarse is not None:
            log_phase("coarse", phase_params(coarse["phase"], coarse["model_args"], seed, coarse["device"]),
                      coarse["history"], tags={"replayed_from": str(args.coarse)})
        with mlflow.start_run(run_name=args.stage, nested=True) if args.stage == "fine" else nullcontext():
            if tracked and args.stage == "fine":
                mlflow.log_params(this_phase)
                mlflow.set_tag("phase", "fine")
            elif tracked:
                mlflow.log_params({k: v for k, v in this_phase.items() if k not in ("k", "seed")})
            result = train_phase(model, train, validation, phase, seed=seed, description=args.stage,
                                 on_epoch=epoch_logger() if tracked else None)
            if tracked:
                log_device(device)
        log.info("%s: best epoch %d, val loss %.4f", args.stage, result.best_epoch, result.best_val_loss)
        save_checkpoint(args.out, checkpoint_dict(
            model, params, stage=args.stage, phase=vars(phase), history=result.history, final_lr=result.final_lr,
            device=result.device, mlflow_run_id=parent.info.run_id if tracked else "",
        ))
        write_json(args.history, result.history)
        if args.stage == "fine" and settings.input_kind == "text":  # no pyfunc for text yet: the files to rebuild it
            for path in (args.out, args.data_dir / "features.json", args.data_dir / "encoder.json"):
                mlflow.log_artifact(str(path), artifact_path="model")
        elif args.stage == "fine":
            example = load_split(args.data_dir / "validation.npz").x[:2, 0]  # (2, 28, 28)
            info = log_pyfunc_model(args.out, args.data_dir / "features.json", tracking["registered_model"], example)
            log.info("logged and registered %s as %s", info.model_uri, tracking["registered_model"])


if __name__ == "__main__":
    main()
