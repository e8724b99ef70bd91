"""Typed configuration built from the ``params.yaml`` dict (the one source of truth).

Each function reads one section and returns the dataclass the core uses; the same params dict goes
into checkpoints, so a model always carries the settings it was trained with.
"""

from __future__ import annotations

from typing import Any

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


def model_args(params: dict[str, Any], kind: str = "ngsll", use_gate: bool = True, k: int | None = None) -> ModelArgs:
    """ModelArgs for binary image models from the ``data`` and ``model`` sections."""
    model, data = section(params, "model"), section(params, "data")
    coarse = section(params, "train", "coarse")
    cells = int(data["cells"])
    return ModelArgs(
        kind=kind,
        task="binary",
        num_classes=len(data["class_names"]),
        num_features=cells * cells,
        conv_channels=list(model["conv_channels"]),
        hidden_layers=int(model["hidden_layers"]),
        hidden_units=int(model["hidden_units"]),
        k=int(k if k is not None else coarse["k"]),
        tau=float(coarse["tau"]),
        use_gate=use_gate,
        mask_zero_features=bool(model["mask_zero_features"]),
    )


def _phase(values: dict[str, Any], batch_size: int, **overrides: Any) -> PhaseConfig:
    accepted = {"k", "tau", "optimizer", "lr", "momentum", "max_epochs", "patience", "lr_decay_factor", "lr_decay_patience"}
    chosen = {key: value for key, value in values.items() if key in accepted}
    return PhaseConfig(batch_size=batch_size, **{**chosen, **overrides})


def coarse_phase(params: dict[str, Any]) -> PhaseConfig:
    """The coarse phase: ``train.coarse`` (paper: K = 10, tau = 1, Adam)."""
    return _phase(section(params, "train", "coarse"), int(section(params, "train", "batch_size")))


def fine_phase(params: dict[str, Any], k: int, coarse_final_lr: float) -> PhaseConfig:
    """The fine phase for target ``k``: ``train.fine``, lr = lr_ratio * the coarse phase's final lr."""
    fine = section(params, "train", "fine")
    lr = float(fine["lr_ratio"]) * coarse_final_lr
    return _phase(fine, int(section(params, "train", "batch_size")), k=k, lr=lr)


def reference_phase(params: dict[str, Any], k: int) -> PhaseConfig:
    """Training of the DNN and the dense ablation: ``train.dnn`` (k only labels the gate at evaluation)."""
    return _phase(section(params, "train", "dnn"), int(section(params, "train", "batch_size")), k=k)
