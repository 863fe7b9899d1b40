"""The termination rules agree exactly with gymnasium's ``terminated`` flag."""

import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch

from nmbrl.envs.termination import (
    ant_terminated,
    hopper_terminated,
    humanoid_terminated,
    inverted_pendulum_terminated,
    never_terminates,
    termination_rule,
    walker2d_terminated,
)

SEED = 0


def random_rollout(env_id: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every next observation and terminated flag of ``steps`` random-action steps."""
    env = gym.make(env_id)
    env.action_space.seed(SEED)
    env.reset(seed=SEED)
    observations, terminations = [], []
    for _ in range(steps):
        observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(observation)
        terminations.append(terminated)
        if terminated or truncated:
            env.reset()
    env.close()
    return torch.from_numpy(np.stack(observations)), torch.tensor(terminations).unsqueeze(-1)


# Random actions end episodes within ~25 steps for all but Ant (~150 steps, by jumping above the
# healthy height of 1.0), so these step counts each see at least ten terminations (Ant: 16).
@pytest.mark.parametrize(
    ("env_id", "steps"),
    [
        ("Hopper-v5", 1500),
        ("Walker2d-v5", 1500),
        ("Ant-v5", 3000),
        ("Humanoid-v5", 1500),
        ("InvertedPendulum-v5", 1500),
    ],
)
def test_rule_matches_gymnasium(env_id: str, steps: int) -> None:
    next_observations, terminated = random_rollout(env_id, steps)
    rule = termination_rule(env_id)

    predicted = rule(next_observations)

    assert predicted.dtype == torch.bool
    assert predicted.shape == (steps, 1)
    assert torch.equal(predicted, terminated)
    assert terminated.sum() >= 10, "too few terminations seen for the test to mean anything"
    # Extra batch dimensions are kept.
    batched = next_observations.reshape(3, steps // 3, -1)
    assert torch.equal(rule(batched), terminated.reshape(3, -1, 1))


@pytest.mark.parametrize(
    ("env_id", "obs_dim"),
    [("HalfCheetah-v5", 17), ("Swimmer-v5", 8), ("Reacher-v5", 10), ("Pusher-v5", 23)],
)
def test_never_terminating_envs(env_id: str, obs_dim: int) -> None:
    rule = termination_rule(env_id)
    next_observations = torch.randn(4, 5, obs_dim)
    next_observations[0, 0, 0] = math.nan

    predicted = rule(next_observations)

    assert rule is never_terminates
    assert predicted.dtype == torch.bool
    assert predicted.shape == (4, 5, 1)
    assert not predicted.any()


def observation_with(obs_dim: int, values: dict[int, float]) -> torch.Tensor:
    """A healthy-looking all-zero observation with some entries set."""
    observation = torch.zeros(obs_dim, dtype=torch.float64)
    for index, value in values.items():
        observation[index] = value
    return observation


# Bounds: gymnasium uses strict inequalities for Hopper, Walker2d and Humanoid, and closed
# intervals for Ant and InvertedPendulum. NaN anywhere in the checked state terminates.
@pytest.mark.parametrize(
    ("rule", "obs_dim", "values", "expected"),
    [
        (hopper_terminated, 11, {0: 1.25}, False),
        (hopper_terminated, 11, {0: 0.7}, True),
        (hopper_terminated, 11, {0: math.inf}, True),
        (hopper_terminated, 11, {0: 1.25, 1: 0.2}, True),
        (hopper_terminated, 11, {0: 1.25, 2: 100.0}, True),
        (hopper_terminated, 11, {0: 1.25, 10: math.nan}, True),
        (walker2d_terminated, 17, {0: 1.25}, False),
        (walker2d_terminated, 17, {0: 0.8}, True),
        (walker2d_terminated, 17, {0: 2.0}, True),
        (walker2d_terminated, 17, {0: 1.25, 1: -1.0}, True),
        (walker2d_terminated, 17, {0: math.nan}, True),
        (ant_terminated, 105, {0: 0.2}, False),
        (ant_terminated, 105, {0: 1.0}, False),
        (ant_terminated, 105, {0: 1.0001}, True),
        (ant_terminated, 105, {0: 0.5, 26: math.inf}, True),
        (ant_terminated, 105, {0: 0.5, 27: math.nan}, False),  # contact forces are not checked
        (humanoid_terminated, 348, {0: 1.4}, False),
        (humanoid_terminated, 348, {0: 1.0}, True),
        (humanoid_terminated, 348, {0: 2.0}, True),
        (inverted_pendulum_terminated, 4, {1: 0.2}, False),
        (inverted_pendulum_terminated, 4, {1: -0.2001}, True),
        (inverted_pendulum_terminated, 4, {3: math.nan}, True),
    ],
)
def test_rule_bounds(
    rule: Callable[[torch.Tensor], torch.Tensor],
    obs_dim: int,
    values: dict[int, float],
    expected: bool,
) -> None:
    assert rule(observation_with(obs_dim, values)).tolist() == [expected]


def test_termination_rule_lookup() -> None:
    assert termination_rule("cartpole-swingup") is never_terminates
    assert termination_rule("Hopper-v5") is hopper_terminated
    assert termination_rule("Ant-v5") is ant_terminated
    assert termination_rule("InvertedDoublePendulum-v5") is None
    assert termination_rule("NoSuchEnv-v0") is None
