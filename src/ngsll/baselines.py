"""Global linear baselines on the simplified input: Ridge and Lasso evaluated with only K weights.

As in the paper, their regularisation strength is chosen by cross validation (scikit-learn's ``RidgeCV``
and ``LassoCV``/``MultiTaskLassoCV``), and accuracy at K keeps only the K largest |weights| (ranked by
the sum of squares over classes for multi-class models); the intercept is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LassoCV, MultiTaskLassoCV, RidgeCV

from ngsll.errors import ConfigError, InputError

LINEAR_MODELS = ("ridge", "lasso")


def regression_targets(y: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    """(N, C) regression targets: +-1 for binary, one-hot +-1 for multi-class, y itself for regression."""
    if task == "binary":
        return (2.0 * y - 1.0)[:, None]
    if task == "multiclass":
        return 2.0 * np.eye(num_classes)[y] - 1.0
    return y.astype(np.float64)[:, None]


@dataclass
class LinearBaseline:
    """A fitted global linear model. ``coef_``: (d, C) weights; ``intercept_``: (C,)."""

    name: str
    task: str
    coef_: np.ndarray
    intercept_: np.ndarray
    alpha_: float

    def top_k_features(self, k: int) -> np.ndarray:
        """Indices of the K features with the largest sum over outputs of squared weights."""
        if k < 1:
            raise ConfigError(f"K must be >= 1, got {k}")
        scores = (self.coef_**2).sum(axis=1)  # (d,)
        return np.argsort(-scores, kind="stable")[:k]

    def decision(self, z: np.ndarray, k: int) -> np.ndarray:
        """(N, C) outputs using only the top-K weights."""
        if z.ndim != 2 or z.shape[1] != self.coef_.shape[0]:
            raise InputError(f"z must have shape (N, {self.coef_.shape[0]}), got {z.shape}")
        kept = self.top_k_features(k)
        return z[:, kept] @ self.coef_[kept] + self.intercept_  # (N, C)

    def predict(self, z: np.ndarray, k: int) -> np.ndarray:
        """(N,) class predictions (or real values for regression) with the top-K weights."""
        scores = self.decision(z, k)
        if self.task == "binary":
            return (scores[:, 0] > 0).astype(np.int64)
        if self.task == "multiclass":
            return scores.argmax(axis=1)
        return scores[:, 0]


def fit_linear_baseline(
    name: str, z: np.ndarray, y: np.ndarray, task: str, num_classes: int = 2, cv_folds: int = 3, seed: int = 0
) -> LinearBaseline:
    """Fit ``ridge`` or ``lasso`` with cross-validated regularisation on (N, d) z and (N,) labels."""
    if name not in LINEAR_MODELS:
        raise ConfigError(f"linear baseline must be one of {LINEAR_MODELS}, got {name!r}")
    targets = regression_targets(y, task, num_classes)  # (N, C)
    if name == "ridge":
        model = RidgeCV(alphas=np.logspace(-3, 3, 13), cv=cv_folds).fit(z, targets)
        coef, alpha = np.atleast_2d(model.coef_).T, float(model.alpha_)
    elif targets.shape[1] == 1:
        model = LassoCV(cv=cv_folds, alphas=30, random_state=seed, max_iter=5000).fit(z, targets[:, 0])
        coef, alpha = model.coef_[:, None], float(model.alpha_)
    else:
        model = MultiTaskLassoCV(cv=cv_folds, alphas=20, random_state=seed, max_iter=2000).fit(z, targets)
        coef, alpha = model.coef_.T, float(model.alpha_)
    return LinearBaseline(name=name, task=task, coef_=coef, intercept_=np.atleast_1d(model.intercept_), alpha_=alpha)
