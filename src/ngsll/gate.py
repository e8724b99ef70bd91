"""The K-Hot Gate Module (K-HGM) of the paper, section 3.2, eqs. (4)-(8).

The gate keeps K of the d features of the simplified input. It ranks features by the squared generated
weights (summed over classes for multi-class models) and never opens a masked feature.

* Training: K sequential Gumbel-softmax draws at temperature ``tau``; each draw blocks the features the
  earlier draws chose (eq. 8) and the masked ones (eq. 7); the gate is their sum (eq. 4). It is soft, so
  gradients reach the weight generator through ``log softmax(w^2)``.
* Evaluation: the deterministic tau -> 0, noise-free limit, i.e. exactly the top-K of ``w^2`` among the
  unmasked features, computed in one ``topk`` call so the cost does not grow with K.

When fewer than K features are unmasked, the gate keeps all of them: outputs stay finite and no masked
feature is ever opened.
"""

from __future__ import annotations

import torch
from torch import nn

from ngsll.errors import ConfigError

_GUMBEL_EPS = 1e-10


def validate_k(k: int, num_features: int | None = None) -> int:
    """Return ``k`` if it is an integer in [1, num_features], else raise :class:`ConfigError`."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError(f"K must be an integer, got {k!r} ({type(k).__name__})")
    if k <= 0:
        raise ConfigError(f"K must be >= 1 (the number of features kept), got {k}")
    if num_features is not None and k > num_features:
        raise ConfigError(f"K must be <= the number of simplified features d={num_features}, got {k}")
    return k


def validate_tau(tau: float) -> float:
    """Return ``tau`` as a float if it is a finite positive number, else raise :class:`ConfigError`."""
    try:
        tau_value = float(tau)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"tau must be a positive number, got {tau!r}") from error
    if not tau_value > 0 or tau_value == float("inf"):
        raise ConfigError(f"tau must be a finite number > 0, got {tau!r}")
    return tau_value


def topk_gate(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Hard gate that opens the top-``k`` ``scores`` among unmasked features, in one pass.

    Args:
        scores: (B, d) ranking scores, e.g. ``w**2`` summed over classes.
        mask: (B, d) bool, True where a feature may not be chosen.
        k: number of features to keep, 1 <= k <= d.

    Returns:
        (B, d) float gate of 0/1 with exactly ``min(k, unmasked count)`` ones per row.
    """
    blocked_scores = scores.masked_fill(mask, float("-inf"))  # (B, d)
    top_indices = blocked_scores.topk(k, dim=-1).indices  # (B, k)
    gate = torch.zeros_like(scores).scatter_(-1, top_indices, 1.0)  # (B, d)
    # Rows with fewer than k unmasked features picked some masked ones above: close those again.
    return gate.masked_fill(mask, 0.0)  # (B, d)


def sequential_argmax_gate(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's K-step gate at evaluation (noise-free argmax draws, one per step).

    Gives the same gate as :func:`topk_gate` (up to ties) but costs K passes; kept to measure that
    difference in benchmarks. Shapes as in :func:`topk_gate`.
    """
    blocked = mask.clone()  # (B, d)
    gate = torch.zeros_like(scores)  # (B, d)
    for _ in range(k):
        available = ~blocked.all(dim=-1, keepdim=True)  # (B, 1)
        choice = scores.masked_fill(blocked, float("-inf")).argmax(dim=-1, keepdim=True)  # (B, 1)
        one_hot = torch.zeros_like(scores).scatter_(-1, choice, 1.0) * available  # (B, d)
        gate = gate + one_hot
        blocked = blocked | one_hot.bool()
    return gate


def gumbel_gate(
    log_pi: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    tau: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Soft K-hot gate from K sequential Gumbel-softmax draws (eqs. 4-8).

    Args:
        log_pi: (B, d) log-probabilities, ``log softmax(w**2)``.
        mask: (B, d) bool, True where a feature may not be chosen (m^(1) = m).
        k: number of draws.
        tau: Gumbel-softmax temperature (> 0).
        generator: optional torch generator for the Gumbel noise.

    Returns:
        (B, d) soft gate, the sum of the K draws; rows run out of features get zero for the extra draws.
    """
    blocked = mask.clone()  # (B, d) m^(t)
    gate = torch.zeros_like(log_pi)  # (B, d)
    for _ in range(k):
        uniform = torch.rand(log_pi.shape, device=log_pi.device, dtype=log_pi.dtype, generator=generator)
        gumbel = -torch.log(-torch.log(uniform.clamp(_GUMBEL_EPS, 1.0 - _GUMBEL_EPS)))  # (B, d) eq. 6
        available = ~blocked.all(dim=-1, keepdim=True)  # (B, 1)
        # A row with nothing left would be softmax over all -inf (NaN): give it zeros instead.
        logits = ((log_pi + gumbel) / tau).masked_fill(blocked, float("-inf"))  # (B, d) eqs. 5, 7
        logits = logits.masked_fill(~available, 0.0)
        draw = torch.softmax(logits, dim=-1) * available  # (B, d) g^(t)
        gate = gate + draw
        chosen = torch.zeros_like(blocked).scatter_(-1, draw.argmax(dim=-1, keepdim=True), True)  # (B, d)
        blocked = blocked | (chosen & available)  # eq. 8
    return gate


class KHotGate(nn.Module):
    """K-Hot Gate Module: soft Gumbel gate in training, exact one-pass top-K in evaluation.

    Args:
        k: number of features kept (>= 1).
        tau: Gumbel-softmax temperature used in training (> 0); the paper uses 1 (coarse) and 0.1 (fine).
    """

    def __init__(self, k: int, tau: float) -> None:
        super().__init__()
        self.k = validate_k(k)
        self.tau = validate_tau(tau)

    def extra_repr(self) -> str:
        return f"k={self.k}, tau={self.tau}"

    def forward(self, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Gate for generated weights.

        Args:
            weights: (B, d, C) dense generated weights (C = 1 for binary/regression).
            mask: (B, d) bool, True where a feature cannot carry evidence.

        Returns:
            (B, d) gate; multiply it into ``weights`` to get the sparse w'.
        """
        scores = weights.pow(2).sum(dim=-1)  # (B, d)
        k = min(self.k, scores.shape[-1])
        if not self.training:
            return topk_gate(scores, mask, k)
        log_pi = torch.log_softmax(scores, dim=-1)  # (B, d)
        return gumbel_gate(log_pi, mask, k, self.tau)
