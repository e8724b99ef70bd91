"""Stages `train_coarse`, `train_fine`, `train_dnn` and `train_dense`: one training phase each.

* coarse: NGSLL with train.coarse (K = 10, tau = 1, Adam) from scratch.
* fine:   for each K of train.ks in turn, NGSLL from the coarse checkpoint with that K, tau = 0.1,
          momentum SGD at lr_ratio x the coarse phase's final learning rate (``--out`` and ``--history``
          are folders: ``k<K>.pt`` and ``k<K>.json``).
* dnn:    the same CNN emitting class logits (the non-interpretable upper bound).
* dense:  NGSLL without K-HGM (dense weights in training; top-K |w| at evaluation).

MLflow: each fine stage is a parent run ``NGSLL K=<k>`` with two nested runs, ``coarse`` (replayed
from the coarse checkpoint it starts from) and ``fine`` (logged live); the fine model (image or text) is
logged as a pyfunc and registered as a version of ``ngsll-<dataset>`` tagged with the dataset, K, the git
commit and the DVC hash of the prepared data. The DNN and the ablation log one run each. Every run logs
the train and validation splits as dataset inputs. Run ids go into the checkpoints.

``--dataset`` names the dataset under ``datasets`` in params.yaml (its sections over ``defaults.<kind>``).

Data parallel (PyTorch DDP): with ``distributed.nproc_per_node`` > 1 in params the stage reruns itself
under ``torchrun`` with that many processes; the script also runs unchanged under a ``torchrun`` the user
starts (several nodes included). Every rank trains on its share of each batch; only rank 0 writes the
checkpoint and the history and logs to MLflow (with the world size). A rank that fails stops the stage
with its error; a rank that hangs fails the others after ``distributed.timeout_s``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from torch.distributed.elastic.multiprocessing.errors import record

from ngsll import build_model
from ngsll.checkpoint import checkpoint_dict, model_from_checkpoint
from ngsll.config import (
    DatasetSettings, coarse_phase, dataset_settings, distributed_settings, fine_phase, model_args, reference_phase,
)
from ngsll.distributed import DistributedContext, init_distributed, launched_by_torchrun, shutdown, torchrun_command
from ngsll.train import PhaseConfig, TensorData, device_description, pick_device, seed_everything, train_phase
from ngsll_plugins.tracking import (
    configure, end_runs_on_signal, epoch_logger, log_device, log_phase, log_pyfunc_model, log_split_inputs,
    phase_params, start_run, tag_model_version,
)
from stage_io import (
    load_checkpoint, load_params, load_split, log, read_json, require_passed, save_checkpoint, setup_logging,
    write_json,
)

STAGES = ("coarse", "fine", "dnn", "dense")
RUN_NAMES = {"dnn": "DNN", "dense": "NGSLL (w/o K-HGM)"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared splits")
    parser.add_argument("--checked", type=Path, required=True, help="validate_prepared's report (must have passed)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (fine: folder of k<K>.pt)")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch metrics JSON (fine: folder of k<K>.json)")
    parser.add_argument("--k", type=int, action="append", help="fine stage: train only this K (repeatable; default: "
                                                               "every K of train.ks)")
    parser.add_argument("--coarse", type=Path, help="coarse checkpoint (fine stage)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    if args.stage == "fine" and args.coarse is None:
        parser.error("the fine stage needs --coarse")
    return args


def run_under_torchrun(nproc_per_node: int, stage: str) -> int:
    """Rerun this very command as ``nproc_per_node`` DDP processes; torchrun's exit status."""
    command = torchrun_command(sys.argv[0], sys.argv[1:], nproc_per_node)
    log.info("stage %s: %d processes under torchrun: %s", stage, nproc_per_node, " ".join(command))
    returncode = subprocess.run(command, check=False).returncode
    if returncode != 0:
        log.error("stage %s failed under torchrun (exit %d): the failing rank and its error are reported above",
                  stage, returncode)
    return returncode


def model_and_phase(args: argparse.Namespace, settings: DatasetSettings, k: int | None) -> tuple[Any, PhaseConfig, dict | None]:
    """The stage's starting model, its :class:`PhaseConfig` and (fine stage, target ``k``) the coarse checkpoint."""
    features = read_json(args.data_dir / "features.json")
    if args.stage == "coarse":
        return build_model(model_args(settings, features)), coarse_phase(settings.train), None
    if args.stage == "fine":
        coarse = load_checkpoint(args.coarse)
        return model_from_checkpoint(coarse), fine_phase(settings.train, k, float(coarse["final_lr"])), coarse
    model = build_model(model_args(settings, features, kind="dnn" if args.stage == "dnn" else "ngsll",
                                   use_gate=args.stage == "dnn"))
    return model, reference_phase(settings.train, k=model.args.k), None


@record  # under torchrun: this rank's traceback goes into torchrun's failure summary
def main() -> None:
    args = parse_args()
    setup_logging()
    require_passed(args.checked)
    params = load_params(args.params)
    scale = distributed_settings(params)
    if scale.nproc_per_node > 1 and not launched_by_torchrun():
        raise SystemExit(run_under_torchrun(scale.nproc_per_node, args.stage))
    context, device = init_distributed(pick_device(params.get("device", "auto")), scale.backend, scale.timeout_s)
    if context.is_distributed:  # torchrun stops the surviving ranks with SIGTERM when one rank fails
        end_runs_on_signal("FAILED", "{signal} from torchrun: another rank failed")
    else:
        end_runs_on_signal()
    try:
        train_stage(args, params, context, device)
    finally:
        shutdown()


def train_stage(args: argparse.Namespace, params: dict[str, Any], context: DistributedContext, device) -> None:
    """Train the stage's model (the fine stage: one model per K, each into ``--out``/k<K>.pt)."""
    settings = dataset_settings(params, args.dataset)
    log.info("stage %s on %s (rank %d of %d)", args.stage, device_description(device), context.rank,
             context.world_size)
    if not context.is_main:
        log.setLevel(logging.WARNING)  # rank 0 reports progress for all; other ranks speak only of trouble
    if args.stage != "fine":
        train_one(args, settings, params, context, device, None, args.out, args.history)
        return
    ks = args.k or settings.ks
    unknown = sorted(set(ks) - set(settings.ks))
    if unknown:
        raise SystemExit(f"--k {unknown} is not in datasets.{args.dataset}.train.ks {settings.ks}")
    for k in ks:
        train_one(args, settings, params, context, device, k, args.out / f"k{k}.pt", args.history / f"k{k}.json")


def train_one(args: argparse.Namespace, settings: DatasetSettings, params: dict[str, Any], context: DistributedContext,
              device, k: int | None, out: Path, history: Path) -> None:
    """One training phase: the model, its checkpoint ``out``, its per-epoch ``history`` and its MLflow runs."""
    seed = int(params["seed"])
    seed_everything(seed)  # the same initial weights on every rank
    model, phase, coarse = model_and_phase(args, settings, k)
    model.to(device)
    splits = {name: (args.data_dir / f"{name}.npz", load_split(args.data_dir / f"{name}.npz"))
              for name in ("train", "validation")}
    train, validation = (TensorData.from_arrays(s.x, s.z, s.y, device=device) for _, s in splits.values())
    log.info("%s: %s", args.stage, phase)

    # Only rank 0 talks to MLflow; the coarse phase is logged under every fine run that starts from it.
    tracked = args.stage != "coarse" and context.is_main
    tracking = settings.tracking
    if tracked:
        configure(tracking["experiment"])
    run_name = f"NGSLL K={k}" if args.stage == "fine" else RUN_NAMES.get(args.stage, args.stage)
    with start_run(run_name) if tracked else nullcontext() as parent:
        this_phase = phase_params(vars(phase), model.args.to_dict(), seed, device_description(device),
                                  context.world_size)
        if tracked:
            mlflow.set_tags({"model": run_name.split(" K=")[0], "stage": args.stage})
            mlflow.log_params({"model": run_name.split(" K=")[0], "dataset": args.dataset, "seed": seed,
                               "world_size": context.world_size})
            if args.stage == "fine":  # the DNN has no K; the ablation logs one nested run per K at evaluation
                mlflow.log_param("k", phase.k)
            mlflow.log_artifact(str(args.params))
            log_split_inputs(args.dataset, splits)
        if tracked and coarse is not None:
            log_phase("coarse", phase_params(coarse["phase"], coarse["model_args"], seed, coarse["device"],
                                             coarse.get("world_size", 1)),
                      coarse["history"], tags={"replayed_from": str(args.coarse)})
        with mlflow.start_run(run_name=args.stage, nested=True) if tracked and args.stage == "fine" else nullcontext():
            if tracked and args.stage == "fine":
                mlflow.log_params(this_phase)
                mlflow.set_tag("phase", "fine")
            elif tracked:
                mlflow.log_params({k: v for k, v in this_phase.items() if k not in ("k", "seed", "world_size")})
            result = train_phase(model, train, validation, phase, seed=seed, description=args.stage,
                                 on_epoch=epoch_logger() if tracked else None, context=context)
            if tracked:
                log_device(device)
        log.info("%s: best epoch %d, val loss %.4f", args.stage, result.best_epoch, result.best_val_loss)
        if not context.is_main:
            return
        save_checkpoint(out, checkpoint_dict(
            model, params, stage=args.stage, phase=vars(phase), history=result.history, final_lr=result.final_lr,
            device=result.device, world_size=context.world_size, mlflow_run_id=parent.info.run_id if tracked else "",
        ))
        write_json(history, result.history)
        if args.stage == "fine":
            register_fine_model(args, settings, out, k, parent.info.run_id, splits["validation"][1])


def register_fine_model(args: argparse.Namespace, settings: DatasetSettings, checkpoint: Path, k: int, run_id: str,
                        validation) -> None:
    """Log the fine checkpoint as a pyfunc in run ``run_id``, register it as ``ngsll-<dataset>`` and tag the
    version with the dataset, K, git commit and DVC data hash (the last two from the run's context tags)."""
    name = settings.tracking["registered_model"]
    examples = {"text": lambda: validation.texts[:2], "image": lambda: image_example(validation.x[:2]),
                "table": lambda: pd.DataFrame.from_records([json.loads(r) for r in validation.records[:2]])}
    example = examples[settings.input_kind]()  # two sentences, images or records
    info = log_pyfunc_model(checkpoint, args.data_dir / "features.json", name, example,
                            encoder_path=args.data_dir / "encoder.json" if settings.kind != "image" else None)
    run_tags = mlflow.get_run(run_id).data.tags  # set by the ngsll run-context plugin
    tags = {"dataset": args.dataset, "k": k, "git_commit": run_tags.get("ngsll.git.commit"),
            "dvc_data_md5": run_tags.get(f"dvc.data.{args.data_dir.as_posix()}")}
    tag_model_version(name, info.registered_model_version, {key: value for key, value in tags.items() if value})
    log.info("logged %s and registered it as %s version %s", info.model_uri, name, info.registered_model_version)


def image_example(x):
    """The pyfunc's input example of (n, C, H, W) images: (n, H, W) for grayscale, (n, H, W, 3) for RGB."""
    return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)


if __name__ == "__main__":
    main()
