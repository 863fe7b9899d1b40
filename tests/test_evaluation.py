"""Evaluation episodes run side by side on a batch of environments, with the returns of one-by-one episodes."""

from __future__ import annotations

import gc

import pytest
import torch
import torchrl
from tensordict import TensorDict

from nmbrl.agent.networks import make_actor
from nmbrl.envs import env_specs, make_env
from nmbrl.errors import ConfigError
from nmbrl.evaluation import evaluate_policy, first_episode_returns, run_episode


def one_by_one_returns(name: str, seed: int, episodes: int, policy, max_steps: int) -> tuple[list[float], list[int]]:
    """Each episode on its own environment, seeded as the batch seeds its members (each seed gives the next)."""
    returns, lengths = [], []
    for _ in range(episodes):
        env = make_env(name, seed=seed)
        next_seed = env.set_seed(seed)  # the same seed again, and the one after it
        episode = run_episode(env, policy, max_steps)
        returns.append(float(episode["next", "reward"].sum()))
        lengths.append(episode.shape[0])
        seed = next_seed
    return returns, lengths


@pytest.mark.parametrize("name, max_steps", [("Hopper-v5", 1000), ("cartpole-swingup", 200)])
def test_a_batched_evaluation_gives_the_returns_of_episodes_run_one_by_one(name: str, max_steps: int) -> None:
    torch.manual_seed(0)
    specs = env_specs(make_env(name, seed=0))
    policy = make_actor(specs.observation_dim, specs.action_spec, [32, 32])

    batched = evaluate_policy(make_env(name, seed=5, num_envs=3), policy, max_steps)
    returns, lengths = one_by_one_returns(name, seed=5, episodes=3, policy=policy, max_steps=max_steps)

    torch.testing.assert_close(batched, torch.tensor(returns), rtol=1e-5, atol=1e-4)
    if name == "Hopper-v5":
        # The untrained policy falls at different times: the batch must stop adding to finished episodes.
        assert len(set(lengths)) > 1 and max(lengths) < max_steps, lengths
    else:
        assert lengths == [max_steps] * 3  # cut by max_steps; dm_control tasks never end early


def test_rewards_after_an_environment_s_first_episode_do_not_count() -> None:
    reward = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]]).unsqueeze(-1)
    done = torch.tensor([[False, True, True, True], [False, False, False, False]]).unsqueeze(-1)
    rollout = TensorDict({"next": {"reward": reward, "done": done}}, batch_size=[2, 4])

    assert first_episode_returns(rollout).tolist() == [3.0, 4.0]


def test_an_unbatched_environment_gives_one_return() -> None:
    env = make_env("InvertedPendulum-v5", seed=0)
    specs = env_specs(env)
    policy = make_actor(specs.observation_dim, specs.action_spec, [8])

    returns = evaluate_policy(env, policy, max_steps=50)

    assert returns.shape == (1,) and returns[0] > 0


@pytest.mark.parametrize("kwargs", [{"num_envs": 0}, {"num_envs": 2, "render_size": 64}])
def test_bad_batch_settings_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="num_envs"):
        make_env("cartpole-swingup", seed=0, **kwargs)


@pytest.mark.parametrize("how", ["close", "garbage collection"])
def test_closing_a_batched_environment_leaves_torch_s_thread_count_alone(how: str, monkeypatch) -> None:
    # TorchRL's close gives back up to this many threads; make it large so the test fails on any machine.
    monkeypatch.setattr(torchrl, "_THREAD_POOL_INIT", 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = make_env("cartpole-swingup", seed=0, num_envs=3)
        specs = env_specs(env)
        evaluate_policy(env, make_actor(specs.observation_dim, specs.action_spec, [8]), max_steps=5)
        if how == "close":
            env.close()
        else:
            del env
            gc.collect()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
