"""Ridge/Lasso baselines keep only their K largest weights at evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from ngsll import ConfigError, InputError
from ngsll.baselines import RIDGE_ALPHAS, LinearBaseline, fit_linear_baseline, ridge_cv_alpha


def test_top_k_uses_only_the_largest_weights() -> None:
    model = LinearBaseline("ridge", "binary", np.array([[0.1], [-3.0], [2.0], [0.0]]), np.array([0.5]), 1.0)
    z = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    assert model.top_k_features(2).tolist() == [1, 2]
    # K = 1 keeps only feature 1 (-3): 1*-3 + 0.5 and 0 + 0.5.
    assert np.allclose(model.decision(z, 1)[:, 0], [-2.5, 0.5])
    assert model.predict(z, 1).tolist() == [0, 1]
    with pytest.raises(ConfigError):
        model.top_k_features(0)
    with pytest.raises(InputError):
        model.decision(np.ones((2, 3)), 1)


@pytest.mark.parametrize("name", ["ridge", "lasso"])
def test_linear_baseline_finds_the_informative_feature(name) -> None:
    rng = np.random.default_rng(0)
    z = rng.uniform(size=(400, 5))
    y = (z[:, 3] > 0.5).astype(np.int64)
    model = fit_linear_baseline(name, z, y, task="binary")
    assert model.top_k_features(1).tolist() == [3]
    assert (model.predict(z, 1) == y).mean() > 0.95


def test_multiclass_baseline_ranks_by_sum_of_squares() -> None:
    rng = np.random.default_rng(1)
    z = rng.uniform(size=(600, 4))
    y = np.digitize(z[:, 1], [1 / 3, 2 / 3])
    model = fit_linear_baseline("ridge", z, y, task="multiclass", num_classes=3)
    assert model.coef_.shape == (4, 3) and model.top_k_features(1).tolist() == [1]


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ConfigError, match="ridge"):
        fit_linear_baseline("svm", np.ones((4, 2)), np.array([0, 1, 0, 1]), task="binary")


@pytest.mark.parametrize(("samples", "features", "outputs"), [(60, 20, 1), (45, 90, 3)])  # XᵀX and XXᵀ (d > N)
def test_ridge_cv_alpha_is_the_alpha_ridgecv_chooses(samples: int, features: int, outputs: int) -> None:
    from sklearn.linear_model import RidgeCV

    chosen = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        z = rng.random((samples, features)).astype(np.float32)
        truth = rng.normal(size=(features, outputs)) * (rng.random((features, 1)) < 0.3)
        targets = z @ truth + rng.normal(scale=0.5 + seed, size=(samples, outputs))  # noisier: a larger alpha
        expected = RidgeCV(alphas=RIDGE_ALPHAS, cv=3).fit(z, targets).alpha_
        assert ridge_cv_alpha(z, targets, RIDGE_ALPHAS, 3) == pytest.approx(expected, rel=1e-12)
        chosen.append(expected)
    assert len(set(chosen)) > 1 and not set(chosen) <= {RIDGE_ALPHAS[0], RIDGE_ALPHAS[-1]}  # the grid's inside
