"""A vectorised probabilistic ensemble: members are a batch dimension, run as batched matmuls.

Shapes: ``E`` ensemble members, ``B`` samples, ``D`` features.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied at once: ``(E, B, in) -> (E, B, out)``."""

    def __init__(self, ensemble_size: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, out_features))

    def forward(self, x: Tensor, members: Tensor | None = None) -> Tensor:
        """Run every member on its own slice of ``x`` (``E x B x in``), or only ``members``."""
        weight, bias = self.weight, self.bias
        if members is not None:
            weight, bias = weight[members], bias[members]
        return torch.baddbmm(bias, x, weight)


class GaussianEnsemble(nn.Module):
    """MLP ensemble predicting a diagonal Gaussian, plus an optional termination logit.

    The log-variance is squashed softly between learned bounds (Chua et al. 2018), so that it
    can neither explode nor collapse.
    """

    def __init__(
        self,
        ensemble_size: int,
        in_dim: int,
        out_dim: int,
        hidden_size: int,
        num_hidden_layers: int,
        termination_head: bool,
    ) -> None:
        super().__init__()
        sizes = [in_dim] + [hidden_size] * num_hidden_layers
        self.hidden = nn.ModuleList(EnsembleLinear(ensemble_size, i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.out_dim = out_dim
        self.termination_head = termination_head
        self.head = EnsembleLinear(ensemble_size, hidden_size, 2 * out_dim + int(termination_head))
        self.max_logvar = nn.Parameter(torch.full((1, 1, out_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, out_dim), -10.0))

    @property
    def layers(self) -> list[EnsembleLinear]:
        return [*self.hidden, self.head]

    def forward(self, x: Tensor, members: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``E x B x in`` -> mean and log-variance (``E x B x out``) and a termination logit (``E x B x 1``)."""
        for layer in self.hidden:
            x = F.silu(layer(x, members))
        out = self.head(x, members)
        mean, raw_logvar = out[..., : self.out_dim], out[..., self.out_dim : 2 * self.out_dim]
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        termination_logit = out[..., -1:] if self.termination_head else None
        return mean, logvar, termination_logit
