"""MLflow glue shared by the pipeline stages.

* :func:`configure`: tracking URI from ``MLFLOW_TRACKING_URI``, else ``sqlite:///<repo>/mlflow.db`` with
  artifacts in ``<repo>/mlartifacts``; telemetry off unless the user turned it on; one experiment per
  dataset.
* :func:`log_phase`: a child run per training phase (params, per-epoch metrics, device).
* :func:`log_pyfunc_model`: the fine model as a pyfunc whose ``predict`` returns the top-K weights,
  registered in the model registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

# `mlflow run` exports MLFLOW_RUN_ID so the command logs into its run; the stages instead open their own
# runs nested under it (see :func:`start_run`), so the launcher's id is taken out of the environment.
_launcher_run_id: str | None = None

PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "pandas", "scikit-learn", "pyyaml", "tqdm", "matplotlib"]


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
    else:
        location = (root / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite") else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
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


def log_pyfunc_model(
    checkpoint_path: Path, features_path: Path, registered_name: str | None, example: np.ndarray | list[str],
    encoder_path: Path | None = None,
) -> Any:
    """Log the checkpoint as an NGSLL pyfunc model in the active run and register it.

    ``example``: two images (N, 28, 28) or, for a text model (``encoder_path`` = the prepared data's
    ``encoder.json``), a list of sentences; it becomes the input example and the signature.
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
    if not isinstance(example, np.ndarray):
        example = pd.DataFrame({"text": list(example)})
    signature = infer_signature(example, model.predict(None, example))
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=model,
        artifacts=artifacts,
        code_paths=[str(Path(ngsll.__file__).parent), str(Path(ngsll_plugins.__file__).parent)],
        signature=signature,
        input_example=example,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_name,
    )
