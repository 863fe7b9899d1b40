"""Action repeat: one transition holds the action for k env steps, and every count stays in env steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchrl.envs.utils import RandomPolicy

from nmbrl.concurrent.pacing import Pacing
from nmbrl.data.module import RLDataModule, TrainingStream
from nmbrl.envs import make_env
from nmbrl.errors import ConfigError


def test_one_transition_holds_the_action_for_k_env_steps_and_sums_their_rewards():
    raw, repeated = make_env("cartpole-swingup", seed=3), make_env("cartpole-swingup", seed=3, action_repeat=4)
    td_raw, td_rep = raw.reset(), repeated.reset()
    assert torch.equal(td_raw["observation"], td_rep["observation"])
    action = torch.tensor([0.7])
    reward = 0.0
    for _ in range(4):
        td_raw = raw.step(td_raw.set("action", action))["next"]
        reward += float(td_raw["reward"])
    td_rep = repeated.step(td_rep.set("action", action))["next"]
    torch.testing.assert_close(td_rep["observation"], td_raw["observation"])
    assert float(td_rep["reward"]) == pytest.approx(reward, rel=1e-5)


def test_an_episode_covers_the_same_env_steps_in_fewer_transitions():
    episode = make_env("cartpole-swingup", seed=0, action_repeat=8).rollout(10_000)
    assert episode.shape[0] == 1000 // 8
    assert bool(episode["next", "done"][-1])


@pytest.mark.parametrize("setting", ["random_steps", "epoch_length"])
def test_step_counts_that_are_not_multiples_of_the_repeat_are_config_errors(setting):
    settings = {"random_steps": 40, "epoch_length": 40, setting: 42}
    with pytest.raises(ConfigError, match=f"{setting}=42 is not a multiple of action_repeat=4"):
        RLDataModule(env="cartpole-swingup", action_repeat=4, **settings)


def test_action_repeat_below_one_is_a_config_error():
    with pytest.raises(ConfigError, match="action_repeat=0"):
        RLDataModule(env="cartpole-swingup", action_repeat=0)


def test_the_training_stream_counts_env_steps_and_gives_updates_per_transition():
    data = RLDataModule(
        env="cartpole-swingup", random_steps=8, epoch_length=12, updates_per_step=2, batch_size=4, action_repeat=4
    )
    data.setup("fit")
    policy = RandomPolicy(data.env.action_spec)
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(policy=policy, device=torch.device("cpu")), current_epoch=0)
    stream = TrainingStream(data)
    batches = list(stream)
    assert data.env_steps == 8 + 12
    assert len(data.real_buffer) == (8 + 12) // 4  # one transition per 4 env steps
    # One batch per transition, holding its 2 updates' batches of 4.
    assert len(batches) == len(stream) == 12 // 4
    assert all(batch.shape == (2, 4) for batch in batches)


def test_pacing_waits_for_whole_transitions():
    pacing = Pacing(random_steps=100, updates_per_step=5, max_lead=0, action_repeat=4)
    assert [pacing.env_steps_needed(u) for u in (0, 4, 5, 10)] == [104, 104, 108, 112]
    assert pacing.update_ratio(env_steps=120, updates=25) == 5.0


def test_env_steps_convert_to_transitions_rounding_up():
    data = RLDataModule(env="cartpole-swingup", random_steps=0, epoch_length=1000, updates_per_step=3, action_repeat=8)
    assert [data.transitions(n) for n in (0, 1, 8, 1000, 1001)] == [0, 1, 1, 125, 126]
    assert data.updates_per_epoch == 125 * 3
