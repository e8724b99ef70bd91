"""Checkpoints as plain dicts (``model_args``, ``state_dict``, ``params`` and extras).

Only tensors, numbers, strings, lists and dicts go in, so ``torch.load(..., weights_only=True)`` loads
them without unpickling arbitrary objects.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ngsll.errors import ConfigError
from ngsll.model import DNNClassifier, NGSLL, build_model

REQUIRED_KEYS = ("model_args", "state_dict")


def checkpoint_dict(model: NGSLL | DNNClassifier, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A plain-dict checkpoint: model arguments, CPU state dict, the run's params and any extras."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return {"model_args": model.args.to_dict(), "state_dict": state, "params": params, **extra}


def model_from_checkpoint(checkpoint: dict[str, Any]) -> NGSLL | DNNClassifier:
    """Rebuild the model of a :func:`checkpoint_dict`, in evaluation mode."""
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ConfigError(f"checkpoint lacks {missing}; a checkpoint holds {list(REQUIRED_KEYS)} and params")
    model = build_model(checkpoint["model_args"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
