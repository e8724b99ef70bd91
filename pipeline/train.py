"""Stages `train_coarse`, `train_fine`, `train_dnn` and `train_dense`: one training phase each.

* coarse: NGSLL with train.coarse (K = 10, tau = 1, Adam) from scratch.
* fine:   NGSLL from the coarse checkpoint with the target K, tau = 0.1, momentum SGD at
          lr_ratio x the coarse phase's final learning rate.
* dnn:    the same CNN emitting class logits (the non-interpretable upper bound).
* dense:  NGSLL without K-HGM (dense weights in training; top-K |w| at evaluation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ngsll import build_model
from ngsll.checkpoint import checkpoint_dict, model_from_checkpoint
from ngsll.config import coarse_phase, fine_phase, model_args, reference_phase
from ngsll.train import device_description, pick_device, seed_everything, train_phase
from stage_io import load_checkpoint, load_params, load_tensors, log, save_checkpoint, setup_logging, write_json

STAGES = ("coarse", "fine", "dnn", "dense")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared splits")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch metrics JSON")
    parser.add_argument("--k", type=int, help="target K (fine stage)")
    parser.add_argument("--coarse", type=Path, help="coarse checkpoint (fine stage)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    params = load_params(args.params)
    seed = int(params["seed"])
    device = pick_device(params.get("device", "auto"))
    log.info("stage %s on %s", args.stage, device_description(device))
    seed_everything(seed)

    extra = {}
    if args.stage == "coarse":
        model = build_model(model_args(params))
        phase = coarse_phase(params)
    elif args.stage == "fine":
        if args.k is None or args.coarse is None:
            parser.error("the fine stage needs --k and --coarse")
        coarse = load_checkpoint(args.coarse)
        model = model_from_checkpoint(coarse)
        phase = fine_phase(params, args.k, float(coarse["final_lr"]))
        extra["coarse_final_lr"] = float(coarse["final_lr"])
    elif args.stage == "dnn":
        model = build_model(model_args(params, kind="dnn"))
        phase = reference_phase(params, k=model.args.k)
    else:
        model = build_model(model_args(params, use_gate=False))
        phase = reference_phase(params, k=model.args.k)

    model.to(device)
    train = load_tensors(args.data_dir / "train.npz", device)
    validation = load_tensors(args.data_dir / "validation.npz", device)
    log.info("%s: %s", args.stage, phase)
    result = train_phase(model, train, validation, phase, seed=seed, description=args.stage)
    log.info("%s: best epoch %d, val loss %.4f", args.stage, result.best_epoch, result.best_val_loss)
    save_checkpoint(args.out, checkpoint_dict(
        model, params, stage=args.stage, phase=vars(phase), history=result.history,
        final_lr=result.final_lr, device=result.device, **extra,
    ))
    write_json(args.history, result.history)


if __name__ == "__main__":
    main()
