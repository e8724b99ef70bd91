"""Global and class-specific feature importance from local linear models (NormLIME and companions).

NGSLL's per-sample sparse weights *are* local linear models, so NormLIME (Ahern et al., eqs. 3-4, 7, 9)
aggregates them directly:

    S(c_i)   = 1/|E(c_i)|   * sum_{w in E(c_i)}   gamma(w, i) |w_i|,   gamma(w, i) = |w_i| / ||w||_1
    S_y(c_i) = 1/|E_y(c_i)| * sum_{w in E_y(c_i)} gamma(w, i) |w_i|

where E(c_i) are the explanations that use feature i (w_i != 0) and E_y those whose *predicted* label is
y; S = 0 for a feature no explanation uses. :class:`NormLIME` keeps per class and feature only sums
and counts, so memory does not depend on the number of samples and shards merge exactly.
"""

from __future__ import annotations

import numpy as np

from ngsll.errors import InputError


class NormLIME:
    """Streaming, mergeable NormLIME accumulator (estimator-style: ``update`` returns ``self``).

    Args:
        num_features: d, the length of each local weight vector.
        num_classes: number of predicted labels y for the class-specific scores.

    After one or more ``update``/``merge`` calls the results are the properties ending in ``_``:
    ``global_importance_`` (d,), ``class_importance_`` (C, d), ``global_signed_`` (d,) and
    ``class_signed_`` (C, d) (mean signed weight over E), ``usage_`` (C, d) (|E_y(c_i)|),
    ``sp_lime_`` (d,) (SP-LIME's ||omega_i||_2, eq. 6) and ``mean_abs_`` (d,) (mean |w_i| over all samples).
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.weighted_sum = np.zeros((num_classes, num_features))  # sum of gamma |w|
        self.signed_sum = np.zeros((num_classes, num_features))  # sum of w over E
        self.count = np.zeros((num_classes, num_features), dtype=np.int64)  # |E_y(c_i)|
        self.squared_sum = np.zeros(num_features)  # sum of w^2 (SP-LIME)
        self.abs_sum = np.zeros(num_features)  # sum of |w| (mean |w|)
        self.samples = 0

    def update(self, weights: np.ndarray, predicted: np.ndarray) -> NormLIME:
        """Add (N, d) local weights with their (N,) predicted labels."""
        weights = np.asarray(weights, dtype=np.float64)
        predicted = np.asarray(predicted)
        if weights.ndim != 2 or weights.shape[1] != self.num_features:
            raise InputError(f"weights must have shape (N, {self.num_features}), got {weights.shape}")
        if predicted.shape != (weights.shape[0],):
            raise InputError(f"predicted must have shape ({weights.shape[0]},), got {predicted.shape}")
        if len(predicted) and (predicted.min() < 0 or predicted.max() >= self.num_classes):
            raise InputError(f"predicted labels must lie in 0..{self.num_classes - 1}")
        if not np.isfinite(weights).all():
            raise InputError("weights contain NaN or infinite values")
        magnitude = np.abs(weights)  # (N, d)
        norm = magnitude.sum(axis=1, keepdims=True)  # (N, 1) ||w||_1
        gamma_abs = np.divide(magnitude**2, norm, out=np.zeros_like(magnitude), where=norm > 0)  # (N, d)
        used = magnitude > 0  # (N, d)
        one_hot = np.eye(self.num_classes)[predicted]  # (N, C)
        self.weighted_sum += one_hot.T @ gamma_abs
        self.signed_sum += one_hot.T @ weights
        self.count += (one_hot.T @ used).astype(np.int64)
        self.squared_sum += (weights**2).sum(axis=0)
        self.abs_sum += magnitude.sum(axis=0)
        self.samples += len(weights)
        return self

    def merge(self, other: NormLIME) -> NormLIME:
        """Add another shard's sums; the result equals one pass over both shards."""
        if (other.num_features, other.num_classes) != (self.num_features, self.num_classes):
            raise InputError("can only merge NormLIME accumulators of the same shape")
        for name in ("weighted_sum", "signed_sum", "count", "squared_sum", "abs_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.samples += other.samples
        return self

    def _require_data(self) -> None:
        if self.samples == 0:
            raise InputError("NormLIME has seen no explanations yet: call update() with at least one sample")

    @staticmethod
    def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
        return np.divide(total, count, out=np.zeros_like(total, dtype=np.float64), where=count > 0)

    @property
    def usage_(self) -> np.ndarray:
        return self.count.copy()

    @property
    def global_importance_(self) -> np.ndarray:
        self._require_data()
        return self._mean(self.weighted_sum.sum(axis=0), self.count.sum(axis=0))

    @property
    def class_importance_(self) -> np.ndarray:
        self._require_data()
        return self._mean(self.weighted_sum, self.count)

    @property
    def global_signed_(self) -> np.ndarray:
        self._require_data()
        return self._mean(self.signed_sum.sum(axis=0), self.count.sum(axis=0))

    @property
    def class_signed_(self) -> np.ndarray:
        self._require_data()
        return self._mean(self.signed_sum, self.count)

    @property
    def sp_lime_(self) -> np.ndarray:
        self._require_data()
        return np.sqrt(self.squared_sum)

    @property
    def mean_abs_(self) -> np.ndarray:
        self._require_data()
        return self.abs_sum / self.samples
