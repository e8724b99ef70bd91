"""Global baselines on the simplified input: Ridge and Lasso (and, for tables, a logistic regression)
evaluated with only K weights, and for tables the usual non-sparse choices, a gradient-boosted model and
an Explainable Boosting Machine.

As in the paper, the linear models' regularisation strength is chosen by cross validation (scikit-learn's
``LassoCV``/``MultiTaskLassoCV``, ``LogisticRegressionCV``, and for Ridge :func:`ridge_cv_alpha`, the alpha
``RidgeCV`` chooses, computed faster), and accuracy at K keeps only the
K largest |weights| (ranked by the sum of squares over classes for multi-class models); the intercept is
kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg
from sklearn.linear_model import LassoCV, LogisticRegressionCV, MultiTaskLassoCV, Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold

from ngsll.errors import ConfigError, InputError

LINEAR_MODELS = ("ridge", "lasso")
TABLE_LINEAR_MODELS = (*LINEAR_MODELS, "logistic")  # tables: also the model a credit team would fit first


def linear_models_for(table: bool, task: str) -> tuple[str, ...]:
    """The linear baselines of a dataset: Ridge and Lasso, plus the logistic regression for a table's classes."""
    return TABLE_LINEAR_MODELS if table and task != "regression" else LINEAR_MODELS
TREE_MODELS = ("gradient boosting", "EBM")


def tree_output_key(name: str, task: str) -> str:
    """The baselines stage's array of a tree model's test-set outputs: class probabilities
    (``EBM_test_probabilities``) or, for regression, predictions (``EBM_test_predictions``)."""
    return f"{name.replace(' ', '_')}_test_{'predictions' if task == 'regression' else 'probabilities'}"


def regression_targets(y: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    """(N, C) regression targets: +-1 for binary, one-hot +-1 for multi-class, y itself for regression."""
    if task == "binary":
        return (2.0 * y - 1.0)[:, None]
    if task == "multiclass":
        return 2.0 * np.eye(num_classes)[y] - 1.0
    return y.astype(np.float64)[:, None]


RIDGE_ALPHAS = np.logspace(-3, 3, 13)


def ridge_cv_alpha(z: np.ndarray, targets: np.ndarray, alphas: np.ndarray = RIDGE_ALPHAS, cv_folds: int = 3) -> float:
    """The alpha ``RidgeCV(alphas, cv=cv_folds)`` chooses for (N, d) ``z`` and (N, C) ``targets``: the best mean
    R² over unshuffled folds (the first alpha on a tie).

    ``RidgeCV`` with ``cv`` runs a grid search that rebuilds each fold's Gram matrix (XᵀX, or XXᵀ when d > N as
    for a bag of words) for every alpha, which is most of its time (about 2 min on MR's 8,000 words). Here each
    fold's centred Gram matrix is built once and every alpha solved on it with the same Cholesky solve as
    scikit-learn's ridge; the scores agree with ``RidgeCV``'s to rounding (tested), and the final model is
    scikit-learn's ``Ridge`` at the chosen alpha.
    """
    scores = np.zeros(len(alphas))  # (A,) sum over folds of the held-out R²
    for train, test in KFold(cv_folds).split(z):
        x_offset, y_offset = z[train].mean(axis=0), targets[train].mean(axis=0)  # (d,), (C,)
        x = z[train] - x_offset  # (n, d)
        y = (targets[train] - y_offset).astype(x.dtype)  # (n, C)
        dual = x.shape[1] > x.shape[0]
        gram = x @ x.T if dual else x.T @ x  # (n, n) or (d, d)
        right = y if dual else x.T @ y  # (n, C) or (d, C)
        held_out = z[test] - x_offset  # (m, d)
        diagonal = gram.diagonal().copy()
        for index, alpha in enumerate(alphas):
            np.fill_diagonal(gram, diagonal + alpha)  # restored exactly below, unlike a += then -=
            solution = linalg.solve(gram, right, assume_a="pos")  # (n or d, C)
            np.fill_diagonal(gram, diagonal)
            coef = x.T @ solution if dual else solution  # (d, C)
            scores[index] += r2_score(targets[test], held_out @ coef + y_offset)
    return float(alphas[int(np.argmax(scores))])


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
    if name not in TABLE_LINEAR_MODELS:
        raise ConfigError(f"linear baseline must be one of {TABLE_LINEAR_MODELS}, got {name!r}")
    if name == "logistic":
        if task == "regression":
            raise ConfigError("the logistic baseline is for classification tasks")
        model = LogisticRegressionCV(Cs=10, cv=cv_folds, max_iter=2000).fit(z, y)
        coef = model.coef_.T if task == "multiclass" else model.coef_.T[:, :1]  # (d, C) or (d, 1)
        return LinearBaseline(name=name, task=task, coef_=coef, intercept_=np.atleast_1d(model.intercept_),
                              alpha_=float(1.0 / np.atleast_1d(model.C_)[0]))
    targets = regression_targets(y, task, num_classes)  # (N, C)
    if name == "ridge":
        alpha = ridge_cv_alpha(z, targets, RIDGE_ALPHAS, cv_folds)
        model = Ridge(alpha=alpha).fit(z, targets)
        coef = np.atleast_2d(model.coef_).T
    elif targets.shape[1] == 1:
        model = LassoCV(cv=cv_folds, alphas=30, random_state=seed, max_iter=5000, n_jobs=-1).fit(z, targets[:, 0])
        coef, alpha = model.coef_[:, None], float(model.alpha_)
    else:
        model = MultiTaskLassoCV(cv=cv_folds, alphas=20, random_state=seed, max_iter=2000, n_jobs=-1).fit(z, targets)
        coef, alpha = model.coef_.T, float(model.alpha_)
    return LinearBaseline(name=name, task=task, coef_=coef, intercept_=np.atleast_1d(model.intercept_), alpha_=alpha)


def fit_tree_baselines(
    train_z: np.ndarray, train_y: np.ndarray, train_frame, test_z: np.ndarray, test_frame, seed: int = 0,
    task: str = "binary",
) -> dict[str, np.ndarray]:
    """Fit the two non-sparse table baselines and return each one's test-set outputs: (N_test, C) class
    probabilities, or for ``task`` regression (N_test, 1) predictions (in the units of ``train_y``).

    ``gradient boosting``: scikit-learn's ``HistGradientBoostingClassifier`` (``...Regressor``) on z
    (standardised numbers, missing flags, one-hots). ``EBM``: interpret's ``ExplainableBoostingClassifier``
    (``...Regressor``) on the raw columns (``train_frame``/``test_frame``, DataFrames of the input columns; it
    bins numbers and handles categories and missing values itself). Both seeded.
    """
    from interpret.glassbox import ExplainableBoostingClassifier, ExplainableBoostingRegressor
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if task == "regression":
        boosted = HistGradientBoostingRegressor(random_state=seed).fit(train_z, train_y)
        ebm = ExplainableBoostingRegressor(random_state=seed, n_jobs=1).fit(train_frame, train_y)
        return {"gradient boosting": boosted.predict(test_z)[:, None], "EBM": ebm.predict(test_frame)[:, None]}
    boosted = HistGradientBoostingClassifier(random_state=seed).fit(train_z, train_y)
    ebm = ExplainableBoostingClassifier(random_state=seed, n_jobs=1).fit(train_frame, train_y)
    return {"gradient boosting": boosted.predict_proba(test_z), "EBM": ebm.predict_proba(test_frame)}
