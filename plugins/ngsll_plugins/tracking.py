"""MLflow glue shared by the pipeline stages.

* :func:`end_runs_on_signal`: SIGTERM / SIGINT stop the stage and end its open runs as KILLED (or FAILED)
  with the reason as the tag ``ngsll.stop_reason``, instead of leaving them RUNNING.
* :func:`configure`: tracking URI from ``MLFLOW_TRACKING_URI``, else ``sqlite:///<repo>/mlflow.db`` with
  artifacts in ``<repo>/mlartifacts``; telemetry off unless the user turned it on; one experiment per
  dataset, created as a model-training experiment (the UI opens it on the runs table).
* :func:`log_phase`: a child run per training phase (params, per-epoch metrics, device).
* :func:`log_split_inputs`: the prepared splits a run read, as MLflow dataset inputs (the runs table's
  Dataset column) whose digest is the split file's DVC hash.
* :func:`log_pyfunc_model`: the fine model as a pyfunc whose ``predict`` returns the top-K weights,
  registered in the model registry; :func:`tag_model_version`, :func:`run_model_version` and
  :func:`set_champion` describe and promote its registered versions.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import signal
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ngsll_plugins import NGSLL_METADATA_KEY  # noqa: E402

# `mlflow run` exports MLFLOW_RUN_ID so the command logs into its run; the stages instead open their own
# runs nested under it (see :func:`start_run`), so the launcher's id is taken out of the environment.
_launcher_run_id: str | None = None

# MLflow 3's UI opens an experiment on the GenAI overview unless it is tagged as model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
CHAMPION = "champion"  # the alias of the served version: models:/ngsll-<dataset>@champion

STOP_REASON_TAG = "ngsll.stop_reason"  # why end_runs_on_signal ended a run

PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "pandas", "scikit-learn", "pyyaml", "tqdm", "matplotlib"]


def end_runs_on_signal(status: str = "KILLED", reason: str = "stopped by {signal}") -> None:
    """From now on SIGTERM and SIGINT stop the process and end every MLflow run it had open.

    The handler itself does no store I/O: the signal may land inside one of MLflow's SQLite transactions,
    whose write lock the interrupted frame still holds, so a write from the handler would wait on that lock
    and fail ("database is locked"), leaving the run RUNNING. Instead the handler notes the ids of the open
    runs and raises ``SystemExit(128 + signal number)``; unwinding rolls the interrupted transaction back,
    runs ``finally`` blocks (temporary files) and ends the ``with start_run()`` blocks as FAILED. An ``atexit``
    hook then gives each noted run the tag ``ngsll.stop_reason`` = ``reason`` (``{signal}`` is replaced by the
    signal's name) and the final ``status``. A second signal while the first one unwinds is ignored.
    """
    stopped: dict[str, Any] = {}  # filled by the first signal: its message and the runs open at that moment

    def stop(signum: int, frame: Any) -> None:
        if stopped:
            return
        stopped.update(message=reason.format(signal=signal.Signals(signum).name), run_ids=open_run_ids())
        raise SystemExit(128 + signum) from None

    def end_stopped_runs() -> None:
        if not stopped:
            return
        message, client = stopped["message"], mlflow.MlflowClient()
        while mlflow.active_run() is not None:  # a run not opened in a `with` block is still on the stack
            try:
                mlflow.end_run(status=status)
            except Exception as error:  # noqa: BLE001 - the loop below retries this run; exit must go on
                print(f"could not end the active MLflow run: {error}", file=sys.stderr, flush=True)
        for run_id in reversed(stopped["run_ids"]):  # innermost first
            try:
                client.set_tag(run_id, STOP_REASON_TAG, message)
                client.set_terminated(run_id, status)
            except Exception as error:  # noqa: BLE001 - one run's failure must not keep the others RUNNING
                print(f"could not end MLflow run {run_id} as {status}: {error}", file=sys.stderr, flush=True)
        print(f"{message}: open MLflow runs ended as {status}", file=sys.stderr, flush=True)

    atexit.register(end_stopped_runs)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def open_run_ids() -> list[str]:
    """Ids of this thread's open MLflow runs, outermost first, read from memory without store I/O.

    MLflow has no public API for its run stack (``mlflow.active_run()`` is only its top), so this reads
    ``mlflow.tracking.fluent._active_run_stack``; pyproject pins MLflow below 3.18, and test_plugins checks
    nested runs against a real store.
    """
    from mlflow.tracking import fluent

    return [run.info.run_id for run in fluent._active_run_stack.get()]


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def configure(experiment: str, root: Path | None = None) -> str:
    """Point MLflow at the project's store and select (creating if needed) ``experiment``; returns its id."""
    global _launcher_run_id
    _launcher_run_id = os.environ.pop("MLFLOW_RUN_ID", None) or _launcher_run_id
    root = root or Path.cwd()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
        if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:  # a store made before the tag existed
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    else:
        location = (root / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite") else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def start_run(run_name: str) -> mlflow.ActiveRun:
    """A new top-level run of the stage, nested under the ``mlflow run`` launcher's run if there is one."""
    return mlflow.start_run(run_name=run_name, parent_run_id=_launcher_run_id)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": value}`` for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def phase_params(
    phase: dict[str, Any], model_args: dict[str, Any], seed: int, device: str, world_size: int = 1,
) -> dict[str, Any]:
    """The params every phase run logs: K, tau, optimiser, lr, L, U, seed, batch size, device, world size, ..."""
    return {
        **{key: phase[key] for key in ("k", "tau", "optimizer", "lr", "momentum", "batch_size", "max_epochs", "patience")},
        "L": model_args["hidden_layers"],
        "U": model_args["hidden_units"],
        "conv_channels": model_args["conv_channels"],
        "use_gate": model_args["use_gate"],
        "seed": seed,
        "device": device,
        "world_size": world_size,
    }


def epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    """A history row as MLflow metrics (same names for every model, so runs compare)."""
    names = {"train_loss": "train_loss", "val_loss": "val_loss", "val_accuracy": "val_accuracy", "lr": "learning_rate",
             "seconds": "seconds_per_epoch"}
    return {metric: float(row[key]) for key, metric in names.items() if key in row}


def epoch_logger() -> Callable[[dict[str, float]], None]:
    """Callback for :func:`ngsll.train.train_phase` that logs each epoch to the active run."""
    return lambda row: mlflow.log_metrics(epoch_metrics(row), step=int(row["epoch"]))


def log_device(device: torch.device) -> None:
    """GPU name and peak memory on CUDA (the device string itself is a param)."""
    if device.type == "cuda":
        mlflow.set_tag("gpu", torch.cuda.get_device_name(device))
        mlflow.log_metric("gpu_peak_memory_mb", torch.cuda.max_memory_allocated(device) / 2**20)


def log_phase(
    name: str,
    params: dict[str, Any],
    history: list[dict[str, float]] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """A finished phase as a nested child run of the active run (history replayed per epoch)."""
    with mlflow.start_run(run_name=name, nested=True) as run:
        mlflow.log_params(params)
        mlflow.set_tags({"phase": name, **(tags or {})})
        for row in history or []:
            mlflow.log_metrics(epoch_metrics(row), step=int(row["epoch"]))
        return run.info.run_id


def file_md5(path: Path) -> str:
    """The MD5 of a file's bytes: the hash DVC records for it (inside a ``.dir`` output too)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def log_split_inputs(dataset: str, splits: Mapping[str, tuple[Path, Any]]) -> None:
    """Log prepared splits to the active run as MLflow dataset inputs.

    ``splits``: context (``train``, ``validation``, ``test``) -> (the split's ``.npz`` file, the loaded
    split with ``x``, ``z``, ``y``). Each becomes the dataset ``<dataset>-<context>`` with the file's DVC
    hash as digest (the same file gives the same digest in every run) and the context as input tag.
    """
    for context, (path, split) in splits.items():
        with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so each time
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            logged = mlflow.data.from_numpy(
                {"x": split.x, "z": split.z}, targets=split.y, source=str(Path(path).resolve()),
                name=f"{dataset}-{context}", digest=file_md5(Path(path)),
            )
        mlflow.log_input(logged, context=context)


def run_model_version(name: str, run_id: str) -> str | None:
    """The version of registered model ``name`` logged by run ``run_id`` (None if it registered none)."""
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max((v.version for v in versions), key=int, default=None)


def tag_model_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set ``tags`` (values as strings) on one registered model version."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def set_champion(name: str, version: str) -> None:
    """Point the ``champion`` alias of registered model ``name`` at ``version`` (the served one)."""
    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version)


def log_pyfunc_model(
    checkpoint_path: Path, features_path: Path, registered_name: str | None,
    example: np.ndarray | list[str] | pd.DataFrame,
    encoder_path: Path | None = None,
) -> Any:
    """Log the checkpoint as an NGSLL pyfunc model in the active run and register it.

    ``example``: two images (N, 28, 28) or, for a text model (``encoder_path`` = the prepared data's
    ``encoder.json``), a list of sentences, or for a table model a DataFrame of two records; it becomes the
    input example and the signature.
    """
    import ngsll
    import ngsll_plugins
    from ngsll_plugins.pyfunc import NGSLLPyfunc
    from mlflow.models import infer_signature

    artifacts = {"checkpoint": str(checkpoint_path), "features": str(features_path)}
    if encoder_path is not None:
        artifacts["encoder"] = str(encoder_path)
    model = NGSLLPyfunc()
    model.load_context(type("Context", (), {"artifacts": artifacts}))
    if not isinstance(example, (np.ndarray, pd.DataFrame)):
        example = pd.DataFrame({"text": list(example)})
    signature = infer_signature(example, model.predict(None, example))
    service = model.service
    metadata = {NGSLL_METADATA_KEY: {"input_kind": service.model.args.input_kind, "task": service.model.args.task,
                                     "k": service.model.args.k, "class_names": service.class_names,
                                     "num_features": len(service.feature_names)}}
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=model,
        artifacts=artifacts,
        code_paths=[str(Path(ngsll.__file__).parent), str(Path(ngsll_plugins.__file__).parent)],
        signature=signature,
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
        metadata=metadata,
        registered_model_name=registered_name,
    )
