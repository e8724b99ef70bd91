"""The K-Hot Gate keeps exactly min(K, available) features and never a masked one."""

from __future__ import annotations

import pytest
import torch

from ngsll import ConfigError, KHotGate
from ngsll.gate import gumbel_gate, sequential_argmax_gate, topk_gate, validate_k, validate_tau


def random_case(seed: int, batch: int = 64, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(batch, d, 3, generator=generator)  # (B, d, C)
    mask = torch.rand(batch, d, generator=generator) < torch.rand(batch, 1, generator=generator)  # varied density
    mask[0] = True  # a fully masked row
    mask[1] = False  # a fully open row
    return weights, mask


@pytest.mark.parametrize("k", [1, 2, 5, 12])
def test_eval_gate_keeps_exactly_min_k_available_and_no_masked(k: int) -> None:
    weights, mask = random_case(k)
    gate = KHotGate(k, tau=0.5).eval()(weights, mask)
    expected = torch.clamp((~mask).sum(dim=1), max=k).float()
    assert torch.equal(gate.sum(dim=1), expected)
    assert set(gate.unique().tolist()) <= {0.0, 1.0}
    assert not (gate.bool() & mask).any()


@pytest.mark.parametrize("k", [1, 3, 7])
def test_eval_gate_opens_the_largest_sum_of_squares(k: int) -> None:
    weights, mask = random_case(100 + k)
    gate = KHotGate(k, tau=1.0).eval()(weights, mask)
    scores = weights.pow(2).sum(-1).masked_fill(mask, -1.0)
    for row in range(len(gate)):
        opened = scores[row][gate[row].bool()]
        closed = scores[row][~gate[row].bool() & ~mask[row]]
        if len(opened) and len(closed):
            assert opened.min() >= closed.max()


def test_one_pass_topk_equals_the_sequential_argmax_gate() -> None:
    weights, mask = random_case(7)
    scores = weights.pow(2).sum(-1)
    for k in (1, 4, 12):
        assert torch.equal(topk_gate(scores, mask, k), sequential_argmax_gate(scores, mask, k))


@pytest.mark.parametrize("k", [1, 4, 12])
def test_training_gate_is_finite_zero_on_masked_and_sums_to_available(k: int) -> None:
    torch.manual_seed(k)
    weights, mask = random_case(200 + k)
    gate = KHotGate(k, tau=0.1).train()(weights, mask)
    assert torch.isfinite(gate).all()
    assert torch.all(gate[mask] == 0)
    # Each Gumbel-softmax draw sums to one while a feature is left; later draws give zeros.
    expected = torch.clamp((~mask).sum(dim=1), max=k).float()
    assert torch.allclose(gate.sum(dim=1), expected, atol=1e-5)


def test_gumbel_gate_approaches_hard_top_k_at_low_temperature() -> None:
    torch.manual_seed(0)
    scores = torch.tensor([[9.0, 0.0, 4.0, 1.0, 16.0]])  # clear ranking in w^2
    mask = torch.zeros_like(scores, dtype=torch.bool)
    log_pi = torch.log_softmax(scores * 10, dim=-1)  # sharp distribution, noise cannot reorder
    gate = gumbel_gate(log_pi, mask, k=2, tau=0.01)
    assert torch.allclose(gate, torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0]]), atol=1e-4)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_invalid_k_is_refused(bad) -> None:
    with pytest.raises(ConfigError, match="K must"):
        validate_k(bad)


def test_k_above_d_is_refused() -> None:
    with pytest.raises(ConfigError, match="d=49"):
        validate_k(50, 49)


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), "warm"])
def test_invalid_tau_is_refused(bad) -> None:
    with pytest.raises(ConfigError, match="tau"):
        validate_tau(bad)


def first_draws(scores: torch.Tensor, tau: float, samples: int, seed: int = 0) -> torch.Tensor:
    """(samples, d) first-draw gates of the training gate (K = 1) for one row of ``scores`` (w^2)."""
    log_pi = torch.log_softmax(scores, dim=-1).expand(samples, -1)  # (N, d)
    mask = torch.zeros_like(log_pi, dtype=torch.bool)
    return gumbel_gate(log_pi, mask, k=1, tau=tau, generator=torch.Generator().manual_seed(seed))


def test_training_gate_first_picks_follow_softmax_of_squared_weights_at_tau_1() -> None:
    """Gumbel-max: the first draw picks feature i with probability softmax(w^2)_i. Without the Gumbel noise
    the top feature would win every time."""
    weights = torch.tensor([1.2, 0.3, 1.0, 0.0, 0.8])
    scores = weights**2  # (d,)
    samples = 40_000
    gate = first_draws(scores, tau=1.0, samples=samples)
    frequency = torch.bincount(gate.argmax(dim=1), minlength=5).double() / samples  # (d,)
    expected = torch.softmax(scores.double(), dim=0)
    tolerance = 4 * torch.sqrt(expected * (1 - expected) / samples)  # four binomial standard errors
    assert torch.all((frequency - expected).abs() <= tolerance), (frequency, expected)
    assert frequency.max() < 0.4  # no single feature dominates: the draws are random


def test_training_gate_temperature_sets_how_one_hot_each_draw_is() -> None:
    """At tau = 1 a draw spreads over features; at small tau it is (nearly) one-hot on the picked feature.
    A gate that ignored tau would give the same spread at both."""
    scores = torch.tensor([1.44, 0.09, 1.0, 0.0, 0.64])
    soft, sharp = (first_draws(scores, tau=tau, samples=5_000, seed=1) for tau in (1.0, 0.05))
    assert soft.max(dim=1).values.mean() < 0.8
    assert sharp.max(dim=1).values.mean() > 0.97
    assert torch.allclose(sharp.sum(dim=1), torch.ones(5_000), atol=1e-5)
