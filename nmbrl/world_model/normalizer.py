"""Per-feature standardisation with statistics taken from real data."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Normalizer(nn.Module):
    """Keeps a mean and a standard deviation as buffers, so they travel with checkpoints."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Take the statistics of ``x`` (``N x D``)."""
        self.mean.copy_(x.mean(0))
        std = x.std(0)
        # A constant feature carries no information: leave it unscaled instead of dividing by ~0.
        self.std.copy_(torch.where(std < self.eps, torch.ones_like(std), std))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean
