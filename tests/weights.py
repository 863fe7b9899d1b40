"""How far apart two sets of weights are, for the tests that train two agents side by side."""

from __future__ import annotations

import torch
from torch.nn.utils import get_total_norm


def distance(these: list[torch.Tensor], those: list[torch.Tensor]) -> float:
    """The L2 norm of ``these - those``, the lists taken as one vector each."""
    return get_total_norm([a.detach() - b.detach() for a, b in zip(these, those, strict=True)]).item()
