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


KINDS = ("image", "text", "table")
SECTIONS = ("data", "validate", "model", "train", "serve")


def deep_merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``override`` laid over it: nested dicts merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in (override or {}).items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


@dataclass
class DatasetSettings:
    """One dataset's settings: ``defaults.<kind>`` of params.yaml with ``datasets.<name>`` laid over it.

    Every dataset names its ``kind`` (``image``, ``text`` or ``table``) and holds the kind's five sections, each
    laid over the default (``{}``: every default): ``data`` (source, task, classes, simplified
    representation), ``validate`` (gate thresholds), ``model``, ``train`` and ``serve`` (over the top-level
    ``serve`` ports and batching). Tracking follows the name: MLflow experiment ``<name>``, registered
    model and served name ``ngsll-<name>``. (dvc.yaml lists each section as a parameter of the stages
    that read it, which is why every section must be present.)
    """

    name: str
    kind: str  # "image", "text" or "table"
    data: dict[str, Any]
    validate: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    serve: dict[str, Any]
    tracking: dict[str, Any]

    @property
    def input_kind(self) -> str:
        return self.kind

    @property
    def ks(self) -> list[int]:
        """The fine models' K values (``train.ks``)."""
        return [int(k) for k in section(self.train, "ks")]


def dataset_names(params: dict[str, Any]) -> list[str]:
    """Names of the datasets configured under ``datasets``."""
    return list(params.get("datasets") or {})


def run_names(params: dict[str, Any]) -> list[str]:
    """The datasets ``dvc repro`` runs (``run``), each checked to be configured."""
    names = list(section(params, "run"))
    unknown = [name for name in names if name not in dataset_names(params)]
    if unknown:
        raise ConfigError(f"run lists {unknown}, which are not under datasets; configured: {dataset_names(params)}")
    return names


def dataset_settings(params: dict[str, Any], dataset: str) -> DatasetSettings:
    """The :class:`DatasetSettings` of ``dataset`` (a name under ``datasets``)."""
    if dataset not in dataset_names(params):
        raise ConfigError(f"unknown dataset {dataset!r}; configured under datasets: {dataset_names(params)}")
    own = section(params, "datasets", dataset) or {}
    kind = own.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"datasets.{dataset}.kind must be one of {list(KINDS)}, got {kind!r}")
    unknown = set(own) - {"kind", "description", *SECTIONS}
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} in datasets.{dataset}; accepted: kind, description, "
                          f"{', '.join(SECTIONS)}")
    missing = [name for name in SECTIONS if not isinstance(own.get(name), dict)]
    if missing:
        raise ConfigError(f"datasets.{dataset} lacks the section(s) {missing}; write e.g. {missing[0]}: {{}} to take "
                          f"every default of defaults.{kind}.{missing[0]}")
    merged = deep_merge(section(params, "defaults", kind), own)
    check_dnn_model(dataset, section(merged, "model"))
    tracking = {"experiment": dataset, "registered_model": f"ngsll-{dataset}"}
    serve = {**(params.get("serve") or {}), **(merged.get("serve") or {}), "model_name": tracking["registered_model"]}
    data = {"description": own.get("description", dataset), **merged.get("data", {})}
    return DatasetSettings(dataset, kind, data, merged.get("validate") or {}, section(merged, "model"),
                           section(merged, "train"), serve, tracking)


DNN_MODEL_KEY = "dnn"  # model.dnn: the DNN's own values of model keys, laid over the section for the DNN only


def check_dnn_model(dataset: str, model: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``model.dnn`` (optional) is a dict of the model section's own keys."""
    overrides = model.get(DNN_MODEL_KEY) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"datasets.{dataset}.model.{DNN_MODEL_KEY} must be a mapping of model keys, got {overrides!r}")
    unknown = set(overrides) - set(model) - {DNN_MODEL_KEY}
    if unknown or DNN_MODEL_KEY in overrides:
        accepted = sorted(set(model) - {DNN_MODEL_KEY})
        raise ConfigError(f"datasets.{dataset}.model.{DNN_MODEL_KEY} sets {sorted(unknown or {DNN_MODEL_KEY})}, "
                          f"which are not keys of the model section; accepted: {accepted}")


def model_section(settings: DatasetSettings, kind: str = "ngsll") -> dict[str, Any]:
    """The model section a model of ``kind`` is built from: ``settings.model`` for NGSLL (gated or not), with
    ``model.dnn`` laid over it for the DNN (e.g. a word dropout that helps the DNN and hurts NGSLL)."""
    shared = {key: value for key, value in settings.model.items() if key != DNN_MODEL_KEY}
    return {**shared, **(settings.model.get(DNN_MODEL_KEY) or {})} if kind == "dnn" else shared


def task_of(features: dict[str, Any]) -> str:
    """The task a prepared ``features.json`` describes: ``regression`` when it says so, else ``binary`` for two
    classes and ``multiclass`` for more."""
    if features.get("task") == "regression":
        return "regression"
    return "binary" if len(features["class_names"]) == 2 else "multiclass"


def model_args(
    settings: DatasetSettings, features: dict[str, Any], kind: str = "ngsll", use_gate: bool = True,
    k: int | None = None,
) -> ModelArgs:
    """ModelArgs of a dataset's models, sized by its prepared ``features.json``.

    ``features`` holds ``feature_names`` and ``class_names`` (binary for two classes, multi-class
    otherwise; ``task: regression`` marks a real-valued target: one output, squared loss), plus ``image``
    (``height``, ``width``, ``channels``) for images, ``sequence_vocabulary_size`` for text, or ``table``
    (``numeric_inputs``, ``category_sizes``) for tables.
    """
    model, coarse = model_section(settings, kind), settings.train["coarse"]
    task = task_of(features)
    num_classes = 1 if task == "regression" else len(features["class_names"])
    common = dict(
        kind=kind, hidden_layers=int(model["hidden_layers"]), hidden_units=int(model["hidden_units"]),
        k=int(k if k is not None else coarse["k"]), tau=float(coarse["tau"]), use_gate=use_gate,
        mask_zero_features=bool(model.get("mask_zero_features", True)),
        output_rank=int(model.get("output_rank", 0)),
        task=task, num_classes=num_classes,
        num_features=len(features["feature_names"]),
    )
    if settings.kind == "image":
        image = features["image"]
        return ModelArgs(image_size=int(image["height"]), image_width=int(image["width"]),
                         in_channels=int(image["channels"]), conv_channels=list(model["conv_channels"]), **common)
    if settings.kind == "table":
        table = features["table"]
        return ModelArgs(input_kind="table", numeric_inputs=int(table["numeric_inputs"]),
                         category_sizes=[int(size) for size in table["category_sizes"]],
                         embedding_dim=int(model["embedding_dim"]), dropout=float(model["dropout"]), **common)
    return ModelArgs(
        input_kind="text", vocab_size=int(features["sequence_vocabulary_size"]),
        embedding_dim=int(model["embedding_dim"]), filter_widths=[int(w) for w in model["filter_widths"]],
        filter_maps=int(model["filter_maps"]), dropout=float(model["dropout"]),
        word_dropout=float(model.get("word_dropout", 0.0)), **common,
    )


def _phase(values: dict[str, Any], batch_size: int, **overrides: Any) -> PhaseConfig:
    accepted = {"k", "tau", "optimizer", "lr", "momentum", "weight_decay", "max_epochs", "patience", "lr_decay_factor",
                "lr_decay_patience", "monitor"}
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
