"""Evaluation episodes with the deterministic policy."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type


def run_episode(env: EnvBase, policy: Callable[[TensorDictBase], TensorDictBase], max_steps: int) -> TensorDictBase:
    """One episode (at most ``max_steps`` steps) acting with the policy's mean action."""
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        return env.rollout(max_steps, policy, break_when_any_done=True, auto_cast_to_device=True)


def evaluate_policy(
    env: EnvBase, policy: Callable[[TensorDictBase], TensorDictBase], episodes: int, max_steps: int
) -> Tensor:
    """Undiscounted return of each of ``episodes`` episodes, acting with the policy's mean action."""
    return torch.stack([run_episode(env, policy, max_steps)["next", "reward"].sum() for _ in range(episodes)])
