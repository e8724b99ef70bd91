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
    ``sp_lime_`` (d,) (SP-LIME's ||omega_i||_2, eq. 6), ``mean_abs_`` (d,) (mean |w_i| over all samples),
    ``class_samples`` (C,) (explanations per predicted label) and ``selection_frequency_`` (C, d) (the share
    of each label's explanations that use feature i). :meth:`update_sparse` takes the K-sparse form a server
    answers with; :meth:`to_dict` / :meth:`from_dict` keep the state as plain JSON.
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.weighted_sum = np.zeros((num_classes, num_features))  # sum of gamma |w|
        self.signed_sum = np.zeros((num_classes, num_features))  # sum of w over E
        self.count = np.zeros((num_classes, num_features), dtype=np.int64)  # |E_y(c_i)|
        self.squared_sum = np.zeros(num_features)  # sum of w^2 (SP-LIME)
        self.abs_sum = np.zeros(num_features)  # sum of |w| (mean |w|)
        self.class_samples = np.zeros(num_classes, dtype=np.int64)  # explanations per predicted label
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
        self.class_samples += np.bincount(predicted, minlength=self.num_classes).astype(np.int64)
        self.samples += len(weights)
        return self

    def update_sparse(self, indices: np.ndarray, weights: np.ndarray, predicted: np.ndarray) -> NormLIME:
        """Add N local models given as their non-zero entries: (N, K) feature ``indices`` (-1 pads a row with
        fewer than K), (N, K) ``weights`` and (N,) predicted labels. Equal to :meth:`update` on the dense form,
        without building it (d may be a vocabulary of tens of thousands of words)."""
        indices, weights = np.asarray(indices), np.asarray(weights, dtype=np.float64)
        predicted = np.asarray(predicted)
        if indices.ndim != 2 or weights.shape != indices.shape:
            raise InputError(f"indices and weights must both have shape (N, K), got {indices.shape} and {weights.shape}")
        if predicted.shape != (indices.shape[0],):
            raise InputError(f"predicted must have shape ({indices.shape[0]},), got {predicted.shape}")
        if len(predicted) and (predicted.min() < 0 or predicted.max() >= self.num_classes):
            raise InputError(f"predicted labels must lie in 0..{self.num_classes - 1}")
        if indices.size and (indices.min() < -1 or indices.max() >= self.num_features):
            raise InputError(f"feature indices must lie in 0..{self.num_features - 1} (-1 for padding)")
        if not np.isfinite(weights).all():
            raise InputError("weights contain NaN or infinite values")
        present = (indices >= 0) & (weights != 0)  # (N, K) entries of the dense vectors that are non-zero
        magnitude = np.where(present, np.abs(weights), 0.0)  # (N, K)
        norm = magnitude.sum(axis=1, keepdims=True)  # (N, 1)
        gamma_abs = np.divide(magnitude**2, norm, out=np.zeros_like(magnitude), where=norm > 0)  # (N, K)
        rows = np.broadcast_to(predicted[:, None], indices.shape)[present]  # (M,) label of each entry
        columns = indices[present]  # (M,)
        np.add.at(self.weighted_sum, (rows, columns), gamma_abs[present])
        np.add.at(self.signed_sum, (rows, columns), weights[present])
        np.add.at(self.count, (rows, columns), 1)
        np.add.at(self.squared_sum, columns, weights[present] ** 2)
        np.add.at(self.abs_sum, columns, magnitude[present])
        self.class_samples += np.bincount(predicted, minlength=self.num_classes).astype(np.int64)
        self.samples += len(predicted)
        return self

    def merge(self, other: NormLIME) -> NormLIME:
        """Add another shard's sums; the result equals one pass over both shards."""
        if (other.num_features, other.num_classes) != (self.num_features, self.num_classes):
            raise InputError("can only merge NormLIME accumulators of the same shape")
        for name in ("weighted_sum", "signed_sum", "count", "squared_sum", "abs_sum", "class_samples"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.samples += other.samples
        return self

    def _require_data(self) -> None:
        if self.samples == 0:
            raise InputError("NormLIME has seen no explanations yet: call update() with at least one sample")

    @staticmethod
    def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
        return np.divide(total, count, out=np.zeros_like(total, dtype=np.float64), where=count > 0)

    STATE = ("weighted_sum", "signed_sum", "count", "squared_sum", "abs_sum", "class_samples")

    def to_dict(self) -> dict:
        """The accumulator's state as plain lists (JSON), enough to rebuild it with :meth:`from_dict`."""
        return {"num_features": self.num_features, "num_classes": self.num_classes, "samples": self.samples,
                **{name: getattr(self, name).tolist() for name in self.STATE}}

    @classmethod
    def from_dict(cls, state: dict) -> NormLIME:
        accumulator = cls(int(state["num_features"]), int(state["num_classes"]))
        for name in cls.STATE:
            value = np.asarray(state[name], dtype=getattr(accumulator, name).dtype)
            if value.shape != getattr(accumulator, name).shape:
                raise InputError(f"NormLIME state {name!r} has shape {value.shape}, expected "
                                 f"{getattr(accumulator, name).shape}")
            setattr(accumulator, name, value)
        accumulator.samples = int(state["samples"])
        return accumulator

    @property
    def usage_(self) -> np.ndarray:
        return self.count.copy()

    @property
    def selection_frequency_(self) -> np.ndarray:
        """(C, d) share of each predicted label's explanations that use each feature (0 for an unseen label)."""
        self._require_data()
        return self._mean(self.count.astype(np.float64), self.class_samples[:, None].astype(np.float64))

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
