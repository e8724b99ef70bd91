"""Shared fixtures: tiny seeded models and inputs whose answers can be checked by hand."""

from __future__ import annotations

import os

import pytest
import torch

from ngsll import ModelArgs, build_model

# mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID, and tests point MLFLOW_TRACKING_URI at their own stores
MLFLOW_ENVIRONMENT = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")


@pytest.fixture(autouse=True)
def no_mlflow_environment_leaks():
    """Restore the MLflow environment variables after every test, so that no test's experiment or store
    reaches another test's subprocesses (``mlflow run --experiment-name`` refuses an inherited experiment id)."""
    saved = {name: os.environ.get(name) for name in MLFLOW_ENVIRONMENT}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def tiny_args(**overrides) -> ModelArgs:
    """A small image model (8x8 inputs, d = 6) that builds and runs in milliseconds."""
    values = dict(num_features=6, image_size=8, conv_channels=[2, 3, 4], hidden_layers=1, hidden_units=8, k=3)
    values.update(overrides)
    return ModelArgs(**values)


@pytest.fixture
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(x, z): 5 images 8x8 and z with rows of 6, 3, 1 and 0 non-zero features."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=generator)
    z = torch.rand(5, 6, generator=generator) + 0.1
    z[1, 3:] = 0.0  # 3 available (= K)
    z[2, 1:] = 0.0  # 1 available (< K)
    z[3] = 0.0  # nothing available
    return x, z


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_args())
