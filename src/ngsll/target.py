"""The scale of a real-valued (regression) target.

Training sees the target standardised over the training split (mean 0, deviation 1), so one learning rate
fits a target in euros and one in degrees alike; metrics, reports and served answers are in the target's
own units. A prediction in those units is ``mean + std * output``, and the explanation keeps its exact
form: ``value = intercept + sum of contributions`` with ``intercept = mean`` and each contribution
``std * z_j * w_j`` (the model's own inner product, scaled).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ngsll.errors import ConfigError


@dataclass(frozen=True)
class TargetScale:
    """``name``: the target column; ``mean`` and ``std``: its training mean and deviation (std > 0)."""

    name: str
    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ConfigError(f"target {self.name!r}: mean and std must be finite with std > 0, got "
                              f"{self.mean}, {self.std}")

    @classmethod
    def fit(cls, name: str, values: np.ndarray) -> TargetScale:
        """The scale of the training values (N,); a constant target keeps std 1 (nothing to learn but the mean)."""
        values = np.asarray(values, dtype=np.float64)
        std = float(values.std())
        return cls(name, float(values.mean()), std if std > 0 else 1.0)

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """(N,) float32 values in training units: (value - mean) / std."""
        return ((np.asarray(values, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def restore(self, outputs: Any) -> Any:
        """Model outputs (any shape, numpy or torch) in the target's own units: mean + std * output."""
        return outputs * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TargetScale:
        return cls(str(values["name"]), float(values["mean"]), float(values["std"]))


def regression_metrics(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """R², RMSE and MAE of (N,) predictions against (N,) targets, both in the target's units.

    R² is 1 - SSE / SST (SST about the targets' own mean; negative values, worse than predicting that mean,
    are kept, not clipped; a constant target gives 0).
    """
    y, predicted = np.asarray(y, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    errors = predicted - y  # (N,)
    total = float(((y - y.mean()) ** 2).sum())
    sse = float((errors**2).sum())
    return {"r2": 1.0 - sse / total if total > 0 else 0.0, "rmse": math.sqrt(sse / len(y)),
            "mae": float(np.abs(errors).mean())}
