"""Which environment names the config accepts, checked before anything is built."""

from __future__ import annotations

import re

import gymnasium
import numpy as np
import pytest
from gymnasium.spaces import Box

from nmbrl.envs import check_env_name
from nmbrl.errors import ConfigError


class ImageObservations(gymnasium.Env):
    """Continuous actions, but 2-d observations: the networks here take a flat vector."""

    observation_space = Box(0.0, 1.0, shape=(8, 8))
    action_space = Box(-1.0, 1.0, shape=(1,))

    def reset(self, *, seed=None, options=None):
        return np.zeros((8, 8), dtype=np.float32), {}

    def step(self, action):
        return np.zeros((8, 8), dtype=np.float32), 0.0, False, False, {}


@pytest.fixture
def image_env():
    gymnasium.register("NmbrlImageObservations-v0", entry_point=ImageObservations)
    yield "NmbrlImageObservations-v0"
    del gymnasium.envs.registry["NmbrlImageObservations-v0"]


@pytest.mark.parametrize("name", ["cartpole-swingup", "walker-walk", "Hopper-v5", "InvertedPendulum-v5", "Pendulum-v1", "MountainCarContinuous-v0"])
def test_continuous_control_tasks_are_accepted(name):
    check_env_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Hoper-v5", "no gymnasium environment has this id"),
        ("cartpole-swingupp", "is not a known environment"),
        # Before: a traceback from the actor's builder ('CategoricalBox' object has no attribute 'low').
        ("CartPole-v1", "has Discrete actions; SAC and MBPO here need continuous (Box) actions"),
        ("FrozenLake-v1", "has Discrete actions"),
        # Before: gymnasium's ImportError traceback (the mujoco-py tasks moved to gymnasium-robotics).
        ("HalfCheetah-v3", "cannot be made here: The mujoco v2 and v3 based environments have been moved"),
    ],
)
def test_unknown_or_discrete_environments_are_config_errors(name, message):
    with pytest.raises(ConfigError, match=f"env='{name}'.*{re.escape(message)}"):
        check_env_name(name)


def test_observations_that_are_not_a_flat_vector_are_a_config_error(image_env):
    with pytest.raises(ConfigError, match=r"Box\(0.0, 1.0, \(8, 8\), float32\) observations.*a flat vector"):
        check_env_name(image_env)


def test_a_missing_optional_dependency_is_a_config_error_with_gymnasiums_advice(monkeypatch):
    # As LunarLanderContinuous-v3 fails without Box2D; made to fail here whatever is installed.
    def make(name, **kwargs):
        raise gymnasium.error.DependencyNotInstalled('Box2D is not installed, run `pip install "gymnasium[box2d]"`')

    monkeypatch.setattr(gymnasium, "make", make)
    with pytest.raises(ConfigError, match=r"env='LunarLanderContinuous-v3' needs a package that is not installed: Box2D is not installed"):
        check_env_name("LunarLanderContinuous-v3")
