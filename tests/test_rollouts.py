"""Branched rollouts: the horizon schedule, the alive mask and imagined rollouts on a real env spec."""

import copy
import re
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict, TensorDictBase

from nmbrl.agent import make_actor
from nmbrl.data import TRANSITION_KEYS, make_replay_buffer
from nmbrl.envs import env_specs, make_env
from nmbrl.envs.termination import termination_rule
from nmbrl.errors import ConfigError
from callbacks import BranchedRollouts, WorldModelTraining
from nmbrl.rollouts import alive_mask, branched_rollout, check_rollout_schedule, confident_mask, rollout_horizon
from nmbrl.world_model import EnsembleWorldModel

ENV = "InvertedPendulum-v5"
START_STATES = 64


def mbpo_horizon(epoch: int, schedule: list[int]) -> int:
    """The rollout length as MBPO computes it (jannerm/mbpo, ``set_rollout_length``)."""
    start, end, low, high = schedule
    if epoch <= start:
        return low
    return int(min((epoch - start) / (end - start), 1) * (high - low) + low)


# --- schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("epoch", "horizon"), [(0, 1), (20, 1), (21, 1), (60, 8), (100, 15), (300, 15)])
def test_rollout_horizon_grows_linearly(epoch, horizon):
    assert rollout_horizon(epoch, [20, 100, 1, 15]) == horizon


@pytest.mark.parametrize("schedule", [[20, 100, 1, 15], [1, 15, 1, 1], [20, 300, 1, 25], [20, 150, 1, 15]])
def test_rollout_horizon_matches_mbpo(schedule):
    assert [rollout_horizon(epoch, schedule) for epoch in range(400)] == [mbpo_horizon(epoch, schedule) for epoch in range(400)]


def test_rollout_horizon_jumps_when_start_and_end_coincide():
    # MBPO would divide by zero here; the schedule then jumps to max_horizon after epoch_start.
    assert [rollout_horizon(epoch, [5, 5, 1, 4]) for epoch in range(4, 8)] == [1, 1, 4, 4]


def test_constant_schedule_always_gives_its_horizon():
    assert {rollout_horizon(epoch, [1, 15, 1, 1]) for epoch in range(200)} == {1}


@pytest.mark.parametrize(
    "schedule",
    [[20, 100, 15], [20, 100, 1.5, 15], [100, 20, 1, 15], [20, 100, 0, 15], [20, 100, 1, 0], [-1, 100, 1, 15]],
    ids=["three-values", "non-integer", "end-before-start", "min-horizon-0", "max-horizon-0", "negative-start"],
)
def test_bad_rollout_schedules_are_config_errors(schedule):
    with pytest.raises(ConfigError, match=re.escape(str(schedule))):
        check_rollout_schedule(schedule)


@pytest.mark.parametrize("schedule", [[20, 100, 1, 15], [1, 15, 1, 1], [0, 0, 1, 1]])
def test_valid_rollout_schedules_are_accepted(schedule):
    check_rollout_schedule(schedule)


# --- alive mask -------------------------------------------------------------------------------


@pytest.mark.parametrize("trailing_dim", [False, True])
def test_alive_mask_keeps_everything_up_to_the_first_termination(trailing_dim):
    terminated = torch.tensor([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    if trailing_dim:
        terminated = terminated.unsqueeze(-1)

    mask = alive_mask(terminated)

    expected = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_alive_mask_drops_steps_after_repeated_terminations():
    terminated = torch.tensor([[0, 1, 1, 0, 1]], dtype=torch.bool)

    assert alive_mask(terminated).tolist() == [[True, True, False, False, False]]


# --- confident mask ---------------------------------------------------------------------------


def test_confident_mask_drops_the_least_certain_steps_and_what_follows_them():
    uncertainty = torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.2, 0.1, 0.3, 0.8], [0.1, 0.2, 0.3, 0.4]])
    alive = torch.ones(3, 4, dtype=torch.bool)

    mask = confident_mask(uncertainty, alive, drop_fraction=2 / 12)

    # 0.9 and 0.8 are the two least certain of 12 steps.
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_confident_mask_keeps_everything_when_dropping_nothing():
    uncertainty = torch.rand(5, 3, 1)

    assert confident_mask(uncertainty, torch.ones(5, 3, dtype=torch.bool), 0.0).all()


def test_confident_mask_ranks_only_the_steps_before_termination():
    # The step after a termination is masked out anyway; its huge uncertainty must not lift the
    # threshold, or the least certain live step would survive.
    uncertainty = torch.tensor([[0.1, 100.0], [0.5, 0.2]])
    alive = torch.tensor([[True, False], [True, True]])

    mask = confident_mask(uncertainty, alive, drop_fraction=1 / 3)

    assert mask.tolist() == [[True, True], [False, False]]


@pytest.mark.parametrize("drop_uncertain", [-0.1, 1.0, 1.5])
def test_bad_drop_fractions_are_config_errors(drop_uncertain):
    with pytest.raises(ConfigError, match=f"drop_uncertain={drop_uncertain} must lie in \\[0, 1\\)"):
        BranchedRollouts(drop_uncertain=drop_uncertain)


# --- branched rollouts on InvertedPendulum ----------------------------------------------------




@pytest.fixture(scope="module")
def pendulum() -> SimpleNamespace:
    """InvertedPendulum with its exact termination rule, a briefly fitted model and a fresh actor."""
    torch.manual_seed(0)
    env = make_env(ENV, seed=0)
    real = env.rollout(300, break_when_any_done=False).reshape(-1)
    specs = env_specs(env)
    world_model = EnsembleWorldModel(
        ensemble_size=3, num_elites=2, hidden_size=32, num_hidden_layers=2, weight_decays=[0.0] * 3, max_epochs=10
    )
    world_model.build(specs, termination_rule(ENV))
    world_model.fit_transitions(real)
    buffer = make_replay_buffer(1000)
    buffer.extend(real)
    return SimpleNamespace(
        env=env,
        real=real,
        buffer=buffer,
        world_model=world_model,
        policy=make_actor(specs.observation_dim, specs.action_spec, [32, 32]),
    )


def record_output(monkeypatch, world_model: EnsembleWorldModel, index: int) -> list[torch.Tensor]:
    """Spy on ``imagine_step``: its ``index``-th output (``N x 1``) at every imagined step, in order."""
    outputs = []
    imagine_step = world_model.imagine_step

    def recorded(observation, action):
        step = imagine_step(observation, action)
        outputs.append(step[index].clone())
        return step

    monkeypatch.setattr(world_model, "imagine_step", recorded)
    return outputs


def record_terminations(monkeypatch, world_model: EnsembleWorldModel) -> list[torch.Tensor]:
    return record_output(monkeypatch, world_model, index=2)


def record_uncertainties(monkeypatch, world_model: EnsembleWorldModel) -> list[torch.Tensor]:
    return record_output(monkeypatch, world_model, index=3)


def zero_action(tensordict: TensorDictBase) -> TensorDictBase:
    """A deterministic policy, so that any difference between rollouts comes from the model."""
    return tensordict.set("action", torch.zeros(*tensordict.batch_size, 1))


def test_imagined_transitions_look_like_real_ones(pendulum):
    torch.manual_seed(1)
    start = pendulum.buffer.sample(START_STATES)

    imagined = branched_rollout(pendulum.world_model, pendulum.env, pendulum.policy, start, horizon=5)

    assert set(imagined.keys(include_nested=True, leaves_only=True)) == set(TRANSITION_KEYS)
    assert imagined.batch_dims == 1 and imagined.shape[0] > 0
    for key in TRANSITION_KEYS:
        assert imagined[key].shape[1:] == pendulum.real[key].shape[1:], key
        assert imagined[key].dtype == pendulum.real[key].dtype, key


def test_nothing_after_a_predicted_termination_is_kept(pendulum, monkeypatch):
    torch.manual_seed(2)
    horizon = 5
    flags = record_terminations(monkeypatch, pendulum.world_model)
    start = pendulum.buffer.sample(START_STATES)

    imagined = branched_rollout(pendulum.world_model, pendulum.env, pendulum.policy, start, horizon)

    terminated = torch.cat(flags, dim=1)  # N x T
    assert terminated.shape == (START_STATES, horizon)
    ever = terminated.any(dim=1)
    first = terminated.int().argmax(dim=1)
    kept_per_start = torch.where(ever, first + 1, torch.full_like(first, horizon))
    # The check is only meaningful if some rollouts terminate early and some do not.
    assert 0 < int((kept_per_start < horizon).sum()) < START_STATES
    assert imagined.shape[0] == int(kept_per_start.sum()) == int(alive_mask(terminated).sum())
    # Each terminated rollout contributes exactly one terminal transition: the terminating step.
    assert int(imagined["next", "terminated"].sum()) == int(ever.sum())


def test_the_same_start_states_give_different_imagined_steps(pendulum):
    torch.manual_seed(3)
    start = pendulum.buffer.sample(START_STATES)

    first = branched_rollout(pendulum.world_model, pendulum.env, zero_action, start, horizon=1)
    second = branched_rollout(pendulum.world_model, pendulum.env, zero_action, start, horizon=1)

    # Horizon 1 keeps every row in start order, and the actions are the same (zero) in both.
    torch.testing.assert_close(first["observation"], start["observation"])
    torch.testing.assert_close(second["observation"], start["observation"])
    assert not torch.allclose(first["next", "observation"], second["next", "observation"])


def test_the_policy_samples_actions_in_rollouts(pendulum):
    torch.manual_seed(4)
    start = pendulum.buffer.sample(START_STATES)

    first = branched_rollout(pendulum.world_model, pendulum.env, pendulum.policy, start, horizon=1)
    second = branched_rollout(pendulum.world_model, pendulum.env, pendulum.policy, start, horizon=1)

    assert not torch.allclose(first["action"], second["action"])
    assert not torch.allclose(first["next", "observation"], second["next", "observation"])


def test_imagined_terminal_transitions_are_done(pendulum):
    torch.manual_seed(2)
    start = pendulum.buffer.sample(START_STATES)

    imagined = branched_rollout(pendulum.world_model, pendulum.env, pendulum.policy, start, horizon=5)

    terminated, done = imagined["next", "terminated"], imagined["next", "done"]
    assert terminated.any()
    # Imagined rollouts are never truncated, so done must be exactly terminated.
    assert torch.equal(done, terminated)


def test_start_states_straight_from_a_real_rollout(pendulum):
    start = pendulum.real[:8]

    imagined = branched_rollout(pendulum.world_model, pendulum.env, pendulum.policy, start, horizon=2)

    assert imagined.shape[0] > 0


def test_imagined_transitions_come_dense_and_in_trajectory_order(pendulum, monkeypatch):
    torch.manual_seed(5)
    horizon = 4
    flags = record_terminations(monkeypatch, pendulum.world_model)
    start = pendulum.buffer.sample(START_STATES)

    imagined = branched_rollout(pendulum.world_model, pendulum.env, pendulum.policy, start, horizon)

    # One dense tensordict (a lazy stack of steps made masking and buffer writes 100 times slower).
    assert isinstance(imagined, TensorDict)
    kept_per_start = alive_mask(torch.cat(flags, dim=1)).sum(dim=1)
    trajectories = imagined.split(kept_per_start.tolist())
    for first_state, trajectory in zip(start["observation"], trajectories):
        torch.testing.assert_close(trajectory["observation"][0], first_state)
        torch.testing.assert_close(trajectory["observation"][1:], trajectory["next", "observation"][:-1])


def test_rollouts_leave_out_the_steps_the_model_is_least_sure_of(pendulum, monkeypatch):
    torch.manual_seed(6)
    uncertainties = record_uncertainties(monkeypatch, pendulum.world_model)
    start = pendulum.buffer.sample(START_STATES)

    imagined = branched_rollout(pendulum.world_model, pendulum.env, zero_action, start, horizon=1, drop_uncertain=0.25)

    # Horizon 1 (nothing follows a step): exactly the 16 least certain of 64 steps are gone, and
    # the kept rows are the start states of the other 48, in order.
    (uncertainty,) = uncertainties
    kept = uncertainty.squeeze(-1) <= uncertainty.squeeze(-1).kthvalue(48).values
    assert imagined.shape[0] == int(kept.sum()) == 48
    torch.testing.assert_close(imagined["observation"], start["observation"][kept])


# --- when the callback rolls out --------------------------------------------------------------


class ModelTrainingElsewhere(WorldModelTraining):
    """A world-model callback whose retraining runs beside the agent, as in concurrent mode."""

    lags_behind = True

    def receive(self, trained_on: int) -> None:
        """What concurrent mode does when a newer published version arrives."""
        self.version += 1
        self.trained_on = trained_on


class RolloutHarness:
    """Just enough of a trainer to drive ``BranchedRollouts.on_train_batch_start`` step by step."""

    def __init__(
        self, pendulum: SimpleNamespace, training: WorldModelTraining, batch_size: int = 8, chunk_size: int = 8, horizon: int = 1
    ) -> None:
        self.logged: list[dict] = []
        data = SimpleNamespace(
            env_steps=0,
            env=pendulum.env,
            real_buffer=pendulum.buffer,
            model_buffer=None,
            epoch_length=100,
        )
        data.resize_model_buffer = lambda capacity: setattr(data, "model_buffer", data.model_buffer or make_replay_buffer(capacity))
        logger = SimpleNamespace(log_metrics=lambda metrics, step: self.logged.append(metrics))
        self.trainer = SimpleNamespace(datamodule=data, callbacks=[training], loggers=[logger], current_epoch=0)
        self.module = SimpleNamespace(policy=pendulum.policy)
        self.rollouts = BranchedRollouts(every=100, batch_size=batch_size, chunk_size=chunk_size, schedule=[1, 5, horizon, horizon])

    def step_to(self, env_steps: int) -> list[int]:
        """Advance to ``env_steps``; the env steps at which rollouts happened so far."""
        self.trainer.datamodule.env_steps = env_steps
        self.rollouts.on_train_batch_start(self.trainer, self.module, None, 0)
        return [metrics["env_steps"] for metrics in self.logged]


def test_a_due_rollout_waits_for_the_model_retrained_beside_the_agent(pendulum):
    training = ModelTrainingElsewhere(pendulum.world_model, every=100)
    harness = RolloutHarness(pendulum, training)
    training.receive(trained_on=0)

    assert harness.step_to(10) == [10]
    assert harness.step_to(100) == [10]  # due, but the retraining on the first 100 steps is not back yet
    assert harness.step_to(120) == [10]
    training.receive(trained_on=101)
    assert harness.step_to(121) == [10, 121]
    assert harness.logged[-1]["rollout/world_model_age_steps"] == 20
    assert harness.step_to(150) == [10, 121]  # a newer model alone is not enough: the next rollout is due at 200
    training.receive(trained_on=140)
    assert harness.step_to(200) == [10, 121, 200]


def test_a_due_rollout_uses_the_model_at_hand_when_it_retrains_in_process(pendulum):
    # Synchronous MBPO retrains just before the rollout, in the same update; nothing is waited for.
    training = WorldModelTraining(pendulum.world_model, every=100)
    harness = RolloutHarness(pendulum, training)

    assert harness.step_to(10) == [10]
    assert harness.step_to(100) == [10, 100]
    assert harness.logged[-1]["rollout/world_model_age_steps"] == 100


def test_the_world_model_joins_the_agent_on_its_device_at_fit_start(pendulum):
    # Lightning moves the agent to its device (a GPU) after the setup hooks and before fit starts;
    # the policy acts in the world model's rollouts, so both must end up on the same device.
    training = WorldModelTraining(copy.deepcopy(pendulum.world_model))
    agent_elsewhere = SimpleNamespace(device=torch.device("meta"))  # a device other than the CPU, available everywhere

    training.on_fit_start(SimpleNamespace(), agent_elsewhere)

    assert {t.device.type for t in [*training.world_model.parameters(), *training.world_model.buffers()]} == {"meta"}


def rolled_out_chunks(monkeypatch) -> list[int]:
    """Spy on the callback's ``branched_rollout``: the start states of each call, in order."""
    import callbacks.rollouts

    sizes = []
    rollout = callbacks.rollouts.branched_rollout

    def recorded(world_model, env, policy, start, *args):
        sizes.append(start.shape[0])
        return rollout(world_model, env, policy, start, *args)

    monkeypatch.setattr(callbacks.rollouts, "branched_rollout", recorded)
    return sizes


def test_a_batch_larger_than_a_chunk_rolls_out_chunk_by_chunk_into_the_buffer(pendulum, monkeypatch):
    sizes = rolled_out_chunks(monkeypatch)
    terminations = record_terminations(monkeypatch, pendulum.world_model)
    harness = RolloutHarness(pendulum, WorldModelTraining(pendulum.world_model, every=100), batch_size=50, chunk_size=16, horizon=3)
    torch.manual_seed(7)

    harness.step_to(10)

    assert sizes == [16, 16, 16, 2]
    # Each chunk's steps: everything up to its rollouts' first terminations, all in the model buffer.
    flags = [torch.cat(terminations[i : i + 3], dim=1) for i in range(0, len(terminations), 3)]
    kept = sum(int(alive_mask(f).sum()) for f in flags)
    assert len(harness.trainer.datamodule.model_buffer) == kept
    assert harness.logged[-1]["rollout/kept_fraction"] == kept / (50 * 3)


def test_a_batch_of_at_most_a_chunk_rolls_out_exactly_as_in_one_pass(pendulum, monkeypatch):
    sizes = rolled_out_chunks(monkeypatch)
    harness = RolloutHarness(pendulum, WorldModelTraining(pendulum.world_model, every=100), batch_size=16, chunk_size=16, horizon=3)
    torch.manual_seed(8)
    harness.step_to(10)
    torch.manual_seed(8)
    start = pendulum.buffer.sample(16)
    one_pass = branched_rollout(pendulum.world_model, pendulum.env, pendulum.policy, start, 3)

    assert sizes == [16]
    stored = harness.trainer.datamodule.model_buffer[: len(one_pass)]
    assert len(harness.trainer.datamodule.model_buffer) == len(one_pass)
    for key in TRANSITION_KEYS:
        torch.testing.assert_close(stored[key], one_pass[key], rtol=0, atol=0)
