"""Branched rollouts: short imagined trajectories from real start states, and their schedule."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type

from nmbrl.data.buffers import select_transitions
from nmbrl.errors import ConfigError
from nmbrl.world_model import EnsembleWorldModel, ImaginedEnv


def check_rollout_schedule(schedule: Sequence[int]) -> None:
    """Raise ConfigError unless ``schedule`` is ``[epoch_start, epoch_end, min_horizon, max_horizon]``."""
    usage = (
        "the rollout schedule must be [epoch_start, epoch_end, min_horizon, max_horizon] with whole numbers, "
        "0 <= epoch_start <= epoch_end and horizons >= 1, e.g. [20, 100, 1, 15]"
    )
    if len(schedule) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in schedule):
        raise ConfigError(f"schedule={list(schedule)}: {usage}.")
    start, end, low, high = schedule
    if not (0 <= start <= end and low >= 1 and high >= 1):
        raise ConfigError(f"schedule={list(schedule)}: {usage}.")


def rollout_horizon(epoch: int, schedule: Sequence[int]) -> int:
    """Rollout length at ``epoch``: ``min_horizon`` until ``epoch_start``, then linear up to ``max_horizon`` at ``epoch_end``."""
    start, end, low, high = schedule
    if epoch <= start:
        return low
    if end == start:
        return high
    fraction = min((epoch - start) / (end - start), 1.0)
    return int(low + fraction * (high - low))


def alive_mask(terminated: Tensor) -> Tensor:
    """Which transitions of ``N x T`` rollouts come before or at their first termination.

    A transition is kept if no earlier step of its rollout terminated; the terminating step itself
    is kept (it is a real terminal transition), everything after it is dropped.
    """
    terminated = terminated.reshape(terminated.shape[0], terminated.shape[1]).long()
    earlier_terminations = terminated.cumsum(dim=1) - terminated
    return earlier_terminations == 0


def confident_mask(uncertainty: Tensor, alive: Tensor, drop_fraction: float) -> Tensor:
    """Which transitions of ``N x T`` rollouts come before the model's least certain steps.

    The ``drop_fraction`` of ``alive`` steps with the highest ``uncertainty`` are dropped, and so
    is everything after them in their rollout: they start from a state the model made up. With
    ``drop_fraction=0`` every step is kept.
    """
    uncertainty = uncertainty.reshape(alive.shape)
    if drop_fraction == 0 or not alive.any():
        return torch.ones_like(alive)
    alive_values = uncertainty[alive]
    keep_count = int(round(alive_values.numel() * (1.0 - drop_fraction)))
    if keep_count == 0:
        return torch.zeros_like(alive)
    threshold = alive_values.kthvalue(keep_count).values
    doubtful = ((uncertainty > threshold) & alive).long()
    return doubtful.cumsum(dim=1) == 0


def branched_rollout(
    world_model: EnsembleWorldModel,
    real_env: EnvBase,
    policy: Callable[[TensorDictBase], TensorDictBase],
    start: TensorDictBase,
    horizon: int,
    drop_uncertain: float = 0.0,
) -> TensorDictBase:
    """Roll ``horizon`` imagined steps from each start state with the stochastic policy.

    Returns the flat batch of imagined transitions that precede a predicted termination, with
    the same keys as real transitions. With ``drop_uncertain`` > 0, that fraction of the steps on
    which the model is least certain is left out too, with what follows them (``confident_mask``):
    the policy cannot learn to seek the states where the model is wrong in its favour.
    """
    env = ImaginedEnv(world_model, real_env, batch_size=start.shape[0])
    start = TensorDict({"observation": start["observation"]}, batch_size=start.shape[:1], device=env.device)
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        # Reset first, so that every step has the same keys and the steps stack into one dense
        # tensordict: masking a lazy stack of steps goes row by row (20 s instead of 0.2 s at horizon 2).
        rollout = env.rollout(
            horizon, policy, auto_reset=False, tensordict=env.reset(start), break_when_any_done=False, return_contiguous=True
        )
    rollout = rollout.reshape(start.shape[0], horizon)
    alive = alive_mask(rollout["next", "terminated"])
    keep = alive & confident_mask(rollout["next", "model_uncertainty"], alive, drop_uncertain)
    return select_transitions(rollout[keep])
