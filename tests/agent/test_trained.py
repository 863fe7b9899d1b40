"""TrainedAgent: actions for observations as gymnasium and dm_control give them, within the bounds, checked sizes."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.envs import ExplorationType, set_exploration_type

from nmbrl import ConfigError, TrainedAgent
from nmbrl.agent import SACAgent
from nmbrl.envs import EnvSpecs, env_specs, make_env


def trained_agent(env_name: str, observation_dim: int, low: list[float], high: list[float], **settings) -> TrainedAgent:
    low_t, high_t = torch.tensor(low), torch.tensor(high)
    agent = SACAgent(hidden_sizes=[32, 32], **settings)
    agent.build(EnvSpecs(observation_dim, Bounded(low=low_t, high=high_t, shape=low_t.shape, dtype=torch.float32)))
    return TrainedAgent(agent, env_name, observation_dim)


@pytest.fixture
def pendulum() -> TrainedAgent:
    return trained_agent("InvertedPendulum-v5", 4, [-3.0], [3.0])


def test_one_observation_gives_the_policys_deterministic_action(pendulum):
    observation = np.array([0.1, -0.2, 0.3, 0.05])

    action = pendulum.act(observation)

    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        expected = pendulum.policy(TensorDict(observation=torch.tensor(observation, dtype=torch.float32)))["action"]
    assert isinstance(action, np.ndarray) and action.shape == (1,)
    np.testing.assert_array_equal(action, expected.numpy())


def test_a_batch_gives_one_action_per_row_and_tensors_give_tensors(pendulum):
    observations = np.random.default_rng(0).normal(size=(6, 4))

    batch = pendulum.act(observations)
    singles = np.stack([pendulum.act(row) for row in observations])
    as_tensor = pendulum.act(torch.tensor(observations))

    assert batch.shape == (6, 1)
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_allclose(as_tensor.numpy(), batch, atol=1e-6)


def test_actions_stay_within_the_bounds_and_sampling_varies(pendulum):
    observations = 50 * np.random.default_rng(1).normal(size=(200, 4))  # far from anything seen: saturated actions

    sampled = pendulum.act(observations, deterministic=False)

    assert (sampled >= -3.0).all() and (sampled <= 3.0).all()
    assert not np.allclose(sampled, pendulum.act(observations, deterministic=False))


def test_a_dm_control_observation_dict_is_flattened_as_training_flattened_it():
    env = make_env("cartpole-swingup", seed=3)
    specs = env_specs(env)
    agent = trained_agent("cartpole-swingup", specs.observation_dim, [-1.0], [1.0])
    torchrl_observation = env.reset()["observation"]
    dm_env = env.base_env._env  # the dm_control env under TorchRL's wrapper, in the same state
    observation = dm_env.task.get_observation(dm_env.physics)  # the dict a dm_control user gets

    assert list(observation) == ["position", "velocity"] and len(observation["velocity"]) == 2
    np.testing.assert_allclose(agent.flat_observation(observation).numpy(), torchrl_observation.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(agent.act(observation), agent.act(torchrl_observation.numpy()))
    shuffled = dict(reversed(list(observation.items())))  # key order does not matter: sorted as CatTensors sorts
    np.testing.assert_array_equal(agent.act(shuffled), agent.act(observation))
    batched = {key: np.stack([value, value]) for key, value in observation.items()}
    assert agent.act(batched).shape == (2, 1)


def test_a_wrong_observation_size_names_the_env_and_size(pendulum):
    with pytest.raises(ConfigError, match=r"observation of shape \(5,\).*'InvertedPendulum-v5'.*size 4"):
        pendulum.act(np.zeros(5))


def test_check_env_refuses_an_env_of_other_spaces(pendulum):
    pendulum.check_env(gym.make("InvertedPendulum-v5"))  # its own env passes

    with pytest.raises(ConfigError, match="observation size 9.*trained on 'InvertedPendulum-v5'"):
        pendulum.check_env(gym.make("InvertedDoublePendulum-v5"))


def test_averaged_true_without_an_averaged_policy_says_what_to_pass():
    agent = SACAgent(hidden_sizes=[32, 32])
    agent.build(EnvSpecs(4, Bounded(low=-torch.ones(1), high=torch.ones(1), shape=(1,), dtype=torch.float32)))

    with pytest.raises(ConfigError, match="averaged=None or False"):
        TrainedAgent(agent, "InvertedPendulum-v5", 4, averaged=True)
