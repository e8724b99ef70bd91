"""Typed configuration built from the ``params.yaml`` dict (the one source of truth).

Each function reads one section and returns the dataclass the core uses; the same params dict goes
into checkpoints, so a model always carries the settings it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ngsll.distributed import BACKENDS
from ngsll.errors import ConfigError
from ngsll.model import ModelArgs
from ngsll.train import PhaseConfig


def section(params: dict[str, Any], *keys: str) -> Any:
    """``params[k1][k2]...``, raising :class:`ConfigError` that names the missing key path."""
    value: Any = params
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise ConfigError(f"params lack {'.'.join(keys[: depth + 1])}; see params.yaml for the accepted keys")
        value = value[key]
    return value


@dataclass
class DatasetSettings:
    """The params sections that describe one dataset's pipeline.

    MNIST reads the top-level ``data``, ``model``, ``train`` and ``tracking`` sections; a text dataset
    ``<name>`` reads ``text.datasets.<name>`` (over ``text.representation`` and ``text.quality``),
    ``text.model`` and ``text.train``, and its own ``experiment`` / ``registered_model`` (default: the dataset's name and
    ``ngsll-<name>``).
    """

    name: str
    input_kind: str  # "image" or "text"
    data: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    tracking: dict[str, Any]


def text_dataset_names(params: dict[str, Any]) -> list[str]:
    """Names of the text datasets configured under ``text.datasets``."""
    return list(params.get("text", {}).get("datasets", {}) or {})


def dataset_settings(params: dict[str, Any], dataset: str = "mnist") -> DatasetSettings:
    """The :class:`DatasetSettings` of ``dataset`` (``mnist`` or a name under ``text.datasets``)."""
    if dataset == "mnist":
        return DatasetSettings("mnist", "image", section(params, "data"), section(params, "model"),
                               section(params, "train"), section(params, "tracking"))
    if dataset not in text_dataset_names(params):
        raise ConfigError(f"unknown dataset {dataset!r}; configured: {['mnist', *text_dataset_names(params)]}")
    data = section(params, "text", "datasets", dataset)
    tracking = {"experiment": data.get("experiment", dataset),
                "registered_model": data.get("registered_model", f"ngsll-{dataset}")}
    defaults = {**section(params, "text", "representation"), **(params["text"].get("quality") or {})}
    return DatasetSettings(dataset, "text", {**defaults, **data},
                           section(params, "text", "model"), section(params, "text", "train"), tracking)


def model_args(
    settings: DatasetSettings, features: dict[str, Any] | None = None, kind: str = "ngsll", use_gate: bool = True,
    k: int | None = None,
) -> ModelArgs:
    """ModelArgs of a dataset's models.

    Images: d = cells^2, binary. Text: d, the token vocabulary size and the classes come from the prepared
    ``features`` (``features.json``: ``feature_names``, ``class_names``, ``sequence_vocabulary_size``);
    binary for two classes, multi-class otherwise.
    """
    model, coarse = settings.model, settings.train["coarse"]
    common = dict(
        kind=kind, hidden_layers=int(model["hidden_layers"]), hidden_units=int(model["hidden_units"]),
        k=int(k if k is not None else coarse["k"]), tau=float(coarse["tau"]), use_gate=use_gate,
        mask_zero_features=bool(model.get("mask_zero_features", True)),
    )
    if settings.input_kind == "image":
        cells = int(settings.data["cells"])
        return ModelArgs(task="binary", num_classes=len(settings.data["class_names"]), num_features=cells * cells,
                         conv_channels=list(model["conv_channels"]), **common)
    if features is None:
        raise ConfigError(f"text dataset {settings.name!r} needs the prepared features.json to size its model")
    num_classes = len(features["class_names"])
    return ModelArgs(
        task="binary" if num_classes == 2 else "multiclass", num_classes=num_classes,
        num_features=len(features["feature_names"]), input_kind="text",
        vocab_size=int(features["sequence_vocabulary_size"]), embedding_dim=int(model["embedding_dim"]),
        filter_widths=[int(w) for w in model["filter_widths"]], filter_maps=int(model["filter_maps"]),
        dropout=float(model["dropout"]), **common,
    )


def _phase(values: dict[str, Any], batch_size: int, **overrides: Any) -> PhaseConfig:
    accepted = {"k", "tau", "optimizer", "lr", "momentum", "weight_decay", "max_epochs", "patience", "lr_decay_factor",
                "lr_decay_patience"}
    chosen = {key: value for key, value in values.items() if key in accepted}
    return PhaseConfig(batch_size=batch_size, **{**chosen, **overrides})


def coarse_phase(train: dict[str, Any]) -> PhaseConfig:
    """The coarse phase from a ``train`` section's ``coarse`` (paper: K = 10, tau = 1, Adam)."""
    return _phase(section(train, "coarse"), int(section(train, "batch_size")))


def fine_phase(train: dict[str, Any], k: int, coarse_final_lr: float) -> PhaseConfig:
    """The fine phase for target ``k``: ``fine`` of a ``train`` section, lr = lr_ratio * the coarse final lr."""
    fine = section(train, "fine")
    lr = float(fine["lr_ratio"]) * coarse_final_lr
    return _phase(fine, int(section(train, "batch_size")), k=k, lr=lr)


def reference_phase(train: dict[str, Any], k: int) -> PhaseConfig:
    """Training of the DNN and the dense ablation: ``dnn`` of a ``train`` section (k labels the gate at
    evaluation only)."""
    return _phase(section(train, "dnn"), int(section(train, "batch_size")), k=k)


@dataclass(frozen=True)
class DistributedSettings:
    """The ``distributed`` section: how many processes train (1: this process; > 1: DDP under torchrun),
    the process-group backend (``auto``: NCCL on GPUs, gloo on CPU) and the collective timeout in seconds."""

    nproc_per_node: int = 1
    backend: str = "auto"
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise ConfigError(f"distributed.nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"distributed.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"distributed.timeout_s must be > 0, got {self.timeout_s}")


def distributed_settings(params: dict[str, Any]) -> DistributedSettings:
    """The ``distributed`` section (absent: one process)."""
    values = params.get("distributed") or {}
    unknown = set(values) - {"nproc_per_node", "backend", "timeout_s"}
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} in distributed; accepted: nproc_per_node, backend, timeout_s")
    return DistributedSettings(
        nproc_per_node=int(values.get("nproc_per_node", 1)), backend=str(values.get("backend", "auto")),
        timeout_s=float(values.get("timeout_s", 600.0)),
    )
