"""Batched NormLIME over a model, the DNN gradient view and the Keep-And-Retrain check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_args
from ngsll import build_model
from ngsll.importance import accumulate_normlime, input_gradient_view, keep_and_retrain
from ngsll.normlime import NormLIME
from ngsll.train import TensorData


def tiny_data(n: int = 9, seed: int = 0) -> TensorData:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    z = x[:, 0].reshape(n, 2, 4, 2, 4).mean(dim=(2, 4)).reshape(n, 4)  # 2x2 cells of 4x4 pixels
    return TensorData(x=x, z=z, y=torch.zeros(n, dtype=torch.long))


def test_batched_accumulation_equals_one_update_over_all_weights() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=4, k=2)).eval()
    data = tiny_data()
    streamed = accumulate_normlime(model, data, num_classes=2, batch_size=2)
    with torch.no_grad():
        output = model(data.x, data.z)
    whole = NormLIME(4, 2).update(output.weights[..., 0].numpy(), (output.logits[:, 0] > 0).long().numpy())
    assert np.allclose(streamed.class_importance_, whole.class_importance_)
    assert streamed.samples == 9 and (streamed.usage_.sum(axis=0) <= 9).all()


def test_pooled_gradient_is_the_derivative_with_respect_to_each_cell() -> None:
    torch.manual_seed(1)
    model = build_model(tiny_args(kind="dnn", num_features=4))
    data = tiny_data(n=3)
    view = input_gradient_view(model, data, grid=[2, 2], batch_size=2)
    expected = np.zeros(4)
    for sample in range(3):
        shift = torch.zeros(4, requires_grad=True)
        masks = torch.zeros(4, 1, 8, 8)
        for cell in range(4):
            row, col = divmod(cell, 2)
            masks[cell, 0, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] = 1.0
        moved = data.x[sample : sample + 1] + (shift.view(4, 1, 1, 1) * masks).sum(dim=0, keepdim=True)
        (grad,) = torch.autograd.grad(model(moved)[0, 0], shift)  # d logit / d (every pixel of a cell)
        expected += grad.numpy() / 3
    assert view.mean_gradient == pytest.approx(expected, abs=1e-5)
    assert 0.0 <= view.surrogate_agreement <= 1.0


def test_keep_and_retrain_punishes_a_ranking_that_drops_the_informative_features() -> None:
    rng = np.random.default_rng(0)
    z = rng.uniform(size=(600, 10))
    y = (z[:, 0] + z[:, 1] > 1).astype(int)
    good = np.array([10.0, 9.0, 1, 1, 1, 1, 1, 1, 1, 1])
    bad = -good
    gains = keep_and_retrain({"good": good, "bad": bad}, z[:400], y[:400], z[400:], y[400:], fractions=(0.5,))
    assert gains["good"][0.5] < 0.05
    assert gains["bad"][0.5] > 0.2


def test_lime_recovers_the_cells_a_model_uses() -> None:
    pytest.importorskip("lime")
    from ngsll.importance import lime_local_weights

    class TwoCellModel(torch.nn.Module):
        """A 'DNN' whose logit is 8 * (mean ink of cell 0) - 8 * (mean ink of cell 3) on 8x8 images."""

        def __init__(self) -> None:
            super().__init__()
            self.args = tiny_args(kind="dnn", num_features=4)
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
            cells = x[:, 0].reshape(-1, 2, 4, 2, 4).mean(dim=(2, 4)).reshape(-1, 4)
            return (8 * cells[:, 0] - 8 * cells[:, 3])[:, None] + self.anchor

    images = np.ones((2, 8, 8), dtype=np.float32)
    weights, predicted = lime_local_weights(TwoCellModel(), images, cells=2, num_samples=300)
    assert weights.shape == (2, 4) and predicted.shape == (2,)
    for row in weights:
        assert row[0] > 0 > row[3]
        assert min(abs(row[0]), abs(row[3])) > 5 * max(abs(row[1]), abs(row[2]))
