"""Keep-And-Retrain the NormLIME paper's way: blanking reaches x exactly, and the retrained classifier's error
tells a ranking that keeps the evidence from one that removes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_args
from ngsll.errors import InputError
from ngsll import kar
from ngsll.kar import image_blanker, keep_and_retrain_classifier, text_blanker
from ngsll.train import PhaseConfig, TensorData


def test_a_removed_cell_is_zero_in_every_pixel_it_covers_and_nothing_else_changes() -> None:
    x = torch.rand(2, 1, 4, 6) + 0.5  # (N, C, H, W), 2 x 3 cells of 2 x 2 pixels
    removed = np.array([False, True, False, False, False, True])  # r0c1 and r1c2
    blanked = image_blanker([2, 3])(x, removed)
    assert torch.all(blanked[:, :, 0:2, 2:4] == 0) and torch.all(blanked[:, :, 2:4, 4:6] == 0)
    untouched = torch.ones(4, 6, dtype=torch.bool)
    untouched[0:2, 2:4] = untouched[2:4, 4:6] = False
    assert torch.equal(blanked[:, :, untouched], x[:, :, untouched])


def test_channel_cells_blank_their_channel_and_luminance_cells_every_channel() -> None:
    x = torch.rand(1, 3, 2, 2) + 0.5  # one cell, three channels
    green = image_blanker([1, 1], "channels")(x, np.array([False, True, False]))
    assert torch.all(green[:, 1] == 0) and torch.equal(green[:, [0, 2]], x[:, [0, 2]])
    assert torch.all(image_blanker([1, 1], "luminance")(x, np.array([True])) == 0)
    with pytest.raises(InputError, match="shape"):
        image_blanker([1, 1], "channels")(x, np.array([True]))


def test_a_removed_word_becomes_padding_wherever_it_occurs() -> None:
    token_features = np.array([-1, -1, 0, 1, -1, 2])  # padding, unknown, "good", "bad", a stopword, "film"
    x = torch.tensor([[2, 3, 4, 5, 0], [3, 3, 1, 2, 0]])
    blanked = text_blanker(token_features)(x, np.array([False, True, False]))  # remove "bad"
    assert blanked.tolist() == [[2, 0, 4, 5, 0], [0, 0, 1, 2, 0]]


def test_the_retrained_classifier_punishes_removing_the_evidence_and_not_removing_noise(monkeypatch) -> None:
    rng = np.random.default_rng(0)

    def split(n: int) -> TensorData:
        x = rng.random((n, 1, 8, 8)).astype(np.float32) * 0.2  # noise in every cell of a 2 x 2 grid
        y = rng.integers(0, 2, n)
        x[y == 1, :, :4, :4] += 0.8  # the label is in cell r0c0 only
        return TensorData.from_arrays(x, np.zeros((n, 4), dtype=np.float32), y)

    train, validation, test = split(384), split(96), split(256)
    args = tiny_args(kind="dnn", num_features=4, k=1, conv_channels=[4, 8, 8], hidden_units=16)
    config = PhaseConfig(max_epochs=4, patience=4, batch_size=32, lr=0.01)
    keeps_evidence = np.array([4.0, 1.0, 2.0, 3.0])  # r0c0 most important: removing half keeps it
    removes_evidence = np.array([0.0, 1.0, 2.0, 3.0])  # r0c0 least important: removing half blanks it
    gains = keep_and_retrain_classifier({"keeps": keeps_evidence, "removes": removes_evidence}, image_blanker([2, 2]),
                                        args, train, validation, test, fractions=[0.5], config=config, random_draws=2)
    assert list(gains) == ["keeps", "removes", "random (mean of 2)"], gains
    assert gains["keeps"][0.5] < 0.05 and gains["removes"][0.5] > 0.3  # chance is 0.5 error, the baseline near 0
    trainings, real = [], kar.retrained_error
    monkeypatch.setattr(kar, "retrained_error", lambda *a: trainings.append(a) or real(*a))
    same_removal = np.array([4.0, 0.5, 2.0, 3.0])  # other scores, the same two least important cells
    again = keep_and_retrain_classifier({"keeps": keeps_evidence, "same removal": same_removal}, image_blanker([2, 2]),
                                        args, train, validation, test, fractions=[0.5], config=config, random_draws=0)
    assert again["keeps"] == again["same removal"] == gains["keeps"]  # seeded: the same removal, the same error
    assert len(trainings) == 2  # nothing removed, and the one removal both rankings share
