"""Soft aggregation of per-object probabilities (from STM, as used by XMem)."""

from __future__ import annotations

import torch

PROBABILITY_EPS = 1e-7
"""Probabilities are clamped to [eps, 1 - eps] before taking log-odds, as in XMem (so outputs are never 0
or 1)."""


def aggregated_log_odds(prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Log-odds of [background, objects] along ``dim``, N channels in -> N + 1 out (background first).

    Background is the probability that no object is present. ``softmax(result, dim)`` is the aggregate.
    """
    background = torch.prod(1 - prob, dim=dim, keepdim=True)
    with_background = torch.cat([background, prob], dim=dim).clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    return torch.log(with_background / (1 - with_background))


def aggregate(prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Merge independent object probabilities into one distribution with a background channel.

    ``prob`` holds N per-object foreground probabilities along ``dim``; the result holds N + 1
    channels along ``dim`` (background first) that sum to one at every position.
    """
    return torch.softmax(aggregated_log_odds(prob, dim), dim=dim)
