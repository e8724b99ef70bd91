"""A problem no global linear model on z can solve, but a local one can, is learned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_args
from ngsll import build_model
from ngsll.baselines import fit_linear_baseline
from ngsll import ConfigError
from ngsll.train import PhaseConfig, PhaseResult, TensorData, evaluate, improves, kept_epoch, train_phase


def context_flip_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = [s * (z0 - 0.5) > 0], where the sign s is visible only in the image x.

    z = (z0, noise, 1): the constant feature lets a local linear model place the threshold. Globally,
    y is independent of every feature of z, so a linear model on z sits at chance.
    """
    rng = np.random.default_rng(seed)
    sign = rng.choice([-1.0, 1.0], size=n)
    z0 = rng.uniform(0, 1, size=n)
    z = np.stack([z0, rng.uniform(0, 1, size=n), np.ones(n)], axis=1).astype(np.float32)  # (n, 3)
    x = np.zeros((n, 1, 8, 8), dtype=np.float32)
    x[sign > 0, :, :4, :] = 1.0  # the context: top half lit for s = +1, bottom half for s = -1
    x[sign < 0, :, 4:, :] = 1.0
    y = (sign * (z0 - 0.5) > 0).astype(np.int64)
    return x, z, y


def test_local_linear_model_learns_what_a_global_one_cannot() -> None:
    train = TensorData.from_arrays(*context_flip_problem(2048, seed=0))
    test_arrays = context_flip_problem(512, seed=1)
    test = TensorData.from_arrays(*test_arrays)
    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=3, k=2, conv_channels=[4, 4, 4], hidden_units=16))
    config = PhaseConfig(k=2, tau=1.0, optimizer="adam", lr=1e-2, max_epochs=30, patience=30, batch_size=64)
    train_phase(model, train, test, config, seed=0, progress=False)
    ngsll_accuracy = evaluate(model, test)["accuracy"]

    ridge = fit_linear_baseline("ridge", train.z.numpy(), train.y.numpy(), task="binary")
    ridge_accuracy = float((ridge.predict(test_arrays[1], k=3) == test_arrays[2]).mean())
    assert ngsll_accuracy > 0.95
    assert ridge_accuracy < 0.65


def test_training_is_repeatable_with_a_seed() -> None:
    data = TensorData.from_arrays(*context_flip_problem(256, seed=2))
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(tiny_args(num_features=3, k=2))
        history = train_phase(model, data, data, PhaseConfig(k=2, max_epochs=2), seed=5, progress=False).history
        results.append(([row["val_loss"] for row in history], model.generator.head[-1].weight.clone()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_the_fine_phase_runs_at_lr_ratio_times_the_coarse_final_lr() -> None:
    """The paper's fine phase: momentum SGD at a tenth of Adam's final learning rate (after its decays)."""
    from ngsll.config import fine_phase

    data = TensorData.from_arrays(*context_flip_problem(128, seed=3))
    coarse_final_lr = 0.0123  # what the coarse checkpoint recorded as its last learning rate
    train = {"batch_size": 32,
             "fine": {"tau": 0.1, "optimizer": "sgd", "momentum": 0.9, "lr_ratio": 0.1, "max_epochs": 1, "patience": 1}}
    phase = fine_phase(train, k=1, coarse_final_lr=coarse_final_lr)
    assert phase.lr == pytest.approx(0.1 * coarse_final_lr) and phase.optimizer == "sgd" and phase.tau == 0.1
    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=3, k=2))
    model.set_gate(phase.k, phase.tau)
    fine = train_phase(model, data, data, phase, seed=0, progress=False)
    assert fine.history[0]["lr"] == pytest.approx(0.1 * coarse_final_lr)  # the optimizer really ran at it


def test_improvement_is_judged_by_the_monitored_metric() -> None:
    kept = PhaseResult(best_val_loss=0.5, best_val_accuracy=0.8)
    lower_loss_lower_accuracy = {"loss": 0.4, "accuracy": 0.7}
    higher_loss_higher_accuracy = {"loss": 0.9, "accuracy": 0.9}
    assert improves(lower_loss_lower_accuracy, kept, "val_loss")
    assert not improves(higher_loss_higher_accuracy, kept, "val_loss")
    assert improves(higher_loss_higher_accuracy, kept, "val_accuracy")
    assert not improves(lower_loss_lower_accuracy, kept, "val_accuracy")
    assert improves({"loss": 0.4, "accuracy": 0.8}, kept, "val_accuracy")  # a tie goes to the lower loss
    assert not improves({"loss": 0.6, "accuracy": 0.8}, kept, "val_accuracy")
    with pytest.raises(ConfigError, match="regression"):
        improves({"loss": 0.4, "mse": 0.4}, PhaseResult(), "val_accuracy")
    with pytest.raises(ConfigError, match="monitor must be one of"):
        PhaseConfig(monitor="accuracy")


def test_an_accuracy_monitor_on_a_regression_model_is_refused_before_any_training() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=3, k=2, task="regression", num_classes=1))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    x, z, y = context_flip_problem(16, seed=0)
    data = TensorData.from_arrays(x, z, y.astype(np.float32))
    epochs: list[dict] = []
    with pytest.raises(ConfigError, match="monitor 'val_accuracy' needs a classification task"):
        train_phase(model, data, data, PhaseConfig(k=2, monitor="val_accuracy"), progress=False,
                    on_epoch=epochs.append)
    assert epochs == []  # refused before the first epoch, not after it
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_the_kept_epoch_is_the_best_one_of_the_monitored_metric() -> None:
    """Noisy labels: the validation loss and accuracy peak at different epochs, and each monitor keeps its own,
    with the weights of that epoch (the final evaluation equals that epoch's history row)."""
    x, z, y = context_flip_problem(600, seed=4)
    flipped = np.random.default_rng(4).random(len(y)) < 0.3
    y = np.where(flipped, 1 - y, y)
    train, validation = TensorData.from_arrays(x[:400], z[:400], y[:400]), TensorData.from_arrays(x[400:], z[400:], y[400:])
    kept = {}
    for monitor in ("val_loss", "val_accuracy"):
        torch.manual_seed(0)
        model = build_model(tiny_args(num_features=3, k=2, hidden_units=32))
        config = PhaseConfig(k=2, lr=3e-2, max_epochs=10, patience=10, batch_size=32, monitor=monitor)
        result = train_phase(model, train, validation, config, seed=0, progress=False)
        best = result.history[result.best_epoch - 1]
        assert evaluate(model, validation) == {"loss": pytest.approx(best["val_loss"]),
                                               "accuracy": pytest.approx(best["val_accuracy"])}
        kept[monitor] = result.best_epoch
        assert kept_epoch(result.history, monitor)["epoch"] == result.best_epoch  # what card and search read
        history = result.history
    losses = [row["val_loss"] for row in history]
    accuracies = [(row["val_accuracy"], -row["val_loss"]) for row in history]  # ties broken by the lower loss
    assert kept["val_loss"] == 1 + int(np.argmin(losses))
    assert kept["val_accuracy"] == 1 + max(range(len(history)), key=accuracies.__getitem__)
    assert kept["val_loss"] != kept["val_accuracy"]  # the two monitors disagree here, so both choices are tested
