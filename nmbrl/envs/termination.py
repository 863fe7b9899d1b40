"""Exact termination rules for gymnasium MuJoCo v5 environments, read from the next observation.

Each rule takes a batch of next observations, a tensor of shape ``(..., obs_dim)`` holding the
environment's default v5 observation (``exclude_current_positions_from_observation=True`` and the
other observation options at their defaults), and returns a bool tensor of shape ``(..., 1)``: True
where gymnasium reports ``terminated`` (never ``truncated``, which is the time limit).

The rules copy gymnasium's ``is_healthy`` checks, strict and closed intervals included, so they
agree exactly with gymnasium on float64 observations. On float32 observations a value within
float32 rounding of a bound may land on the other side of it.

InvertedDoublePendulum-v5 terminates on the height of the pole tip, a site position that is not in
the observation, so it has no rule and ``termination_rule`` returns None for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

TerminationRule = Callable[[torch.Tensor], torch.Tensor]

GYM_ID = re.compile(r"^(?P<base>.+)-v\d+$")


def inside(values: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Elementwise ``low < values < high``; NaN is never inside."""
    return (low < values) & (values < high)


def terminated_unless(healthy: torch.Tensor) -> torch.Tensor:
    """Turn a healthy flag of shape ``(...)`` into a terminated flag of shape ``(..., 1)``."""
    return (~healthy).unsqueeze(-1)


def never_terminates(next_observation: torch.Tensor) -> torch.Tensor:
    """All False, shape ``(..., 1)``: the environment ends only by truncation."""
    return torch.zeros(
        next_observation.shape[:-1] + (1,), dtype=torch.bool, device=next_observation.device
    )


def hopper_terminated(next_observation: torch.Tensor) -> torch.Tensor:
    """Hopper-v5 (obs_dim 11): healthy while all of

    - height ``obs[0]`` in (0.7, inf),
    - torso angle ``obs[1]`` in (-0.2, 0.2),
    - ``obs[1:]`` (joint angles and the clipped velocities) in (-100, 100), so NaN terminates.

    gymnasium checks the unclipped velocities against (-100, 100); the observation clips them to
    [-10, 10], so a speed of 100 or more cannot be seen here (NaN can: clipping keeps it).
    """
    height = next_observation[..., 0]
    angle = next_observation[..., 1]
    state = next_observation[..., 1:]
    healthy = (
        inside(height, 0.7, math.inf)
        & inside(angle, -0.2, 0.2)
        & inside(state, -100.0, 100.0).all(dim=-1)
    )
    return terminated_unless(healthy)


def walker2d_terminated(next_observation: torch.Tensor) -> torch.Tensor:
    """Walker2d-v5 (obs_dim 17): healthy while height ``obs[0]`` is in (0.8, 2.0) and torso
    angle ``obs[1]`` is in (-1, 1). gymnasium has no finiteness check here beyond these two."""
    height = next_observation[..., 0]
    angle = next_observation[..., 1]
    healthy = inside(height, 0.8, 2.0) & inside(angle, -1.0, 1.0)
    return terminated_unless(healthy)


def ant_terminated(next_observation: torch.Tensor) -> torch.Tensor:
    """Ant-v5 (obs_dim 105): healthy while torso height ``obs[0]`` is in the closed [0.2, 1.0]
    and the joint state ``obs[0:27]`` (qpos[2:] then qvel) is finite.

    gymnasium also requires the x, y position (not observed) to be finite; the contact forces
    ``obs[27:]`` are not part of the check.
    """
    height = next_observation[..., 0]
    joint_state = next_observation[..., :27]
    healthy = torch.isfinite(joint_state).all(dim=-1) & (0.2 <= height) & (height <= 1.0)
    return terminated_unless(healthy)


def humanoid_terminated(next_observation: torch.Tensor) -> torch.Tensor:
    """Humanoid-v5 (obs_dim 348): healthy while torso height ``obs[0]`` is in (1.0, 2.0)."""
    height = next_observation[..., 0]
    return terminated_unless(inside(height, 1.0, 2.0))


def inverted_pendulum_terminated(next_observation: torch.Tensor) -> torch.Tensor:
    """InvertedPendulum-v5 (obs_dim 4): terminated when any of ``obs`` is not finite or the pole
    angle ``obs[1]`` leaves the closed [-0.2, 0.2]."""
    angle = next_observation[..., 1]
    healthy = torch.isfinite(next_observation).all(dim=-1) & (angle.abs() <= 0.2)
    return terminated_unless(healthy)


GYM_RULES: dict[str, TerminationRule] = {
    "Hopper": hopper_terminated,
    "Walker2d": walker2d_terminated,
    "Ant": ant_terminated,
    "Humanoid": humanoid_terminated,
    "InvertedPendulum": inverted_pendulum_terminated,
    "HalfCheetah": never_terminates,
    "Swimmer": never_terminates,
    "Reacher": never_terminates,
    "Pusher": never_terminates,
    "HumanoidStandup": never_terminates,
    # InvertedDoublePendulum: its termination reads a site position that is not observed.
}


def termination_rule(env_name: str) -> TerminationRule | None:
    """Exact termination rule for an environment, or None when none is known.

    dm_control names ('domain-task', e.g. 'cartpole-swingup', containing no '-v<digits>' suffix)
    never terminate -> never_terminates.
    Gymnasium ids are matched on their base name before '-v' (e.g. 'Hopper-v5' -> the Hopper
    rule). Unknown ids -> None.
    """
    gym_id = GYM_ID.match(env_name)
    if gym_id:
        return GYM_RULES.get(gym_id["base"])
    if "-" in env_name:
        return never_terminates
    return None
