"""Evaluation episodes with the deterministic policy."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type


def run_episode(
    env: EnvBase, policy: Callable[[TensorDictBase], TensorDictBase], max_steps: int, seed: int | None = None
) -> TensorDictBase:
    """One episode (at most ``max_steps`` steps) acting with the policy's mean action.

    With ``seed``, the episode starts from ``seeded_reset(env, seed)``: the start state a
    gymnasium user gets from ``env.reset(seed=seed)``.
    """
    start = None if seed is None else seeded_reset(env, seed)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        return env.rollout(
            max_steps, policy, break_when_any_done=True, auto_cast_to_device=True, auto_reset=start is None, tensordict=start
        )


def seeded_reset(env: EnvBase, seed: int) -> TensorDictBase:
    """Reset ``env`` to the start state of ``seed``.

    A gymnasium env gets ``reset(seed=seed)``, as in plain gymnasium; a dm_control task gets its
    task RNG reseeded and then a reset (as ``suite.load(..., task_kwargs={"random": seed})``).
    """
    try:
        return env.reset(seed=seed)
    except TypeError:  # dm_control's reset takes no seed
        env.set_seed(seed)
        return env.reset()


def evaluate_policy(env: EnvBase, policy: Callable[[TensorDictBase], TensorDictBase], max_steps: int) -> Tensor:
    """Undiscounted return of one episode (at most ``max_steps`` steps) per environment in ``env``.

    A batched environment (``make_env(..., num_envs=n)``) runs its n episodes side by side, one
    policy call per step for all of them, until the last one ends; an environment whose episode
    has ended waits for the others and adds nothing more.
    """
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        rollout = env.rollout(
            max_steps, policy, break_when_any_done=False, break_when_all_done=True, auto_cast_to_device=True
        )
    return first_episode_returns(rollout).reshape(-1)


def first_episode_returns(rollout: TensorDictBase) -> Tensor:
    """Sum of each environment's rewards up to and including its first ``done`` (time is the last batch dim)."""
    done = rollout["next", "done"].squeeze(-1).long()
    in_first_episode = (done.cumsum(-1) - done) == 0
    return (rollout["next", "reward"].squeeze(-1) * in_first_episode).sum(-1)
