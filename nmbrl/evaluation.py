"""Evaluation episodes with the deterministic policy."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type


def evaluate_policy(
    env: EnvBase, policy: Callable[[TensorDictBase], TensorDictBase], episodes: int, max_steps: int
) -> Tensor:
    """Undiscounted return of each of ``episodes`` episodes, acting with the policy's mean action."""
    returns = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(episodes):
            episode = env.rollout(max_steps, policy, break_when_any_done=True, auto_cast_to_device=True)
            returns.append(episode["next", "reward"].sum())
    return torch.stack(returns)
