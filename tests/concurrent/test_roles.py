"""The collector and world-model roles in real processes: data and weights flow between them and the test."""

from __future__ import annotations

import io
import time

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import RandomPolicy

from nmbrl.agent import make_actor
from nmbrl.concurrent.collector_role import CollectorRole
from nmbrl.concurrent.pacing import Pacing
from nmbrl.concurrent.shared import CONTEXT, SharedWeights, make_shared_replay_buffer, module_weights
from nmbrl.concurrent.supervisor import RoleProcess
from nmbrl.concurrent.world_model_role import WorldModelRole, published_world_model
from nmbrl.data import select_transitions
from nmbrl.envs import env_specs, make_env
from nmbrl.envs.termination import termination_rule
from nmbrl.tracking import RoleLogger
from nmbrl.world_model import EnsembleWorldModel

ENV = "cartpole-swingup"


def wait_until(condition, role: RoleProcess, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        role.check()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def make_collector_role(max_lead: int | None, random_steps: int = 0):
    env = make_env(ENV, seed=0)
    actor = make_actor(env_specs(env).observation_dim, env.action_spec, [8])
    policy = SharedWeights(module_weights(actor).set("agent_updates", torch.tensor(0)))
    buffer = make_shared_replay_buffer(1000, select_transitions(env.fake_tensordict()))
    counters = {name: CONTEXT.Value("q", 0) for name in ("env_steps", "agent_updates", "policy_version")}
    role = CollectorRole(
        env_name=ENV,
        action_repeat=1,
        seed=0,
        actor=actor,
        policy=policy,
        buffer=buffer,
        pacing=Pacing(random_steps=random_steps, updates_per_step=2, max_lead=max_lead),
        logger=RoleLogger(None),
        **counters,
    )
    return role, actor


def publish(role: CollectorRole, actor, agent_updates: int) -> int:
    with torch.no_grad():
        for parameter in actor.parameters():
            parameter.add_(1.0)
    return role.policy.publish(module_weights(actor).set("agent_updates", torch.tensor(agent_updates)))


def test_collector_fills_the_buffer_and_takes_each_newer_policy():
    role, actor = make_collector_role(max_lead=None)
    publish(role, actor, agent_updates=0)
    process = RoleProcess(role)
    process.start()
    try:
        wait_until(lambda: role.env_steps.value >= 20, process)
        assert role.policy_version.value == 1
        assert len(role.buffer) >= 20
        assert publish(role, actor, agent_updates=10) == 2
        wait_until(lambda: role.policy_version.value == 2, process)
        steps = role.env_steps.value
        wait_until(lambda: role.env_steps.value > steps + 10, process)
    finally:
        process.stop()
    assert len(role.buffer) == role.env_steps.value
    observations = role.buffer[:]["observation"]
    assert observations.abs().sum(-1).min() > 0  # every row was written


def test_collector_waits_max_lead_steps_past_the_step_the_agent_needs():
    role, actor = make_collector_role(max_lead=3, random_steps=5)
    publish(role, actor, agent_updates=0)
    process = RoleProcess(role)
    process.start()
    try:
        limit = role.pacing.env_steps_needed(0) + 3
        wait_until(lambda: role.env_steps.value == limit, process)
        time.sleep(0.5)  # time enough for dozens of steps, were it not waiting
        assert role.env_steps.value == limit
        role.agent_updates.value = 4  # two more env steps needed at 2 updates per step
        wait_until(lambda: role.env_steps.value == limit + 2, process)
    finally:
        process.stop()


def random_transitions(env, steps: int):
    rollout = env.rollout(steps, RandomPolicy(env.action_spec), break_when_any_done=False)
    return select_transitions(rollout)


def make_world_model_role(transitions: int = 100) -> WorldModelRole:
    env = make_env(ENV, seed=0)
    world_model = EnsembleWorldModel(ensemble_size=2, num_elites=1, hidden_size=8, num_hidden_layers=1, weight_decays=[0.0, 0.0], max_epochs=2)
    world_model.build(env_specs(env), termination_rule(ENV))
    buffer = make_shared_replay_buffer(1000, select_transitions(env.fake_tensordict()))
    buffer.extend(random_transitions(env, transitions))
    return WorldModelRole(
        world_model,
        SharedWeights(published_world_model(world_model, 0)),
        buffer,
        CONTEXT.Value("q", transitions),
        first_at=50,
        every=20,
        retraining=CONTEXT.Value("b", 0, lock=False),
        logger=RoleLogger(None),
    )


def test_world_model_role_publishes_a_new_version_for_every_batch_of_new_data():
    role = make_world_model_role()
    env, world_model, buffer, env_steps, weights = make_env(ENV, seed=1), role.world_model, role.buffer, role.env_steps, role.weights
    initial = module_weights(world_model).clone()
    process = RoleProcess(role)
    process.start()
    try:
        wait_until(lambda: weights.version.value == 1, process)
        buffer.extend(random_transitions(env, 20))
        env_steps.value = 120
        wait_until(lambda: weights.version.value == 2, process)
    finally:
        final = process.stop()
    version, published = weights.read()
    assert version == 2 and int(published["env_steps"]) == 120
    assert bool(published["trained"])
    assert not torch.equal(published["network", "head", "weight"], initial["network", "head", "weight"])
    state = torch.load(io.BytesIO(final), weights_only=True)
    assert state["optimizer"]["state"], "the optimizer state comes back for the final checkpoint"
    assert state["trained_on"] == 120, "and the env steps of the data the final weights saw"
    assert torch.equal(state["world_model"]["network.head.weight"], published["network", "head", "weight"])


def test_world_model_role_flags_each_retraining_while_it_runs_and_after_a_failure_too(monkeypatch):
    role = make_world_model_role()
    fit = role.world_model.fit_transitions
    seen = []

    def recording_fit(*args, **kwargs):
        seen.append(role.retraining.value)
        return fit(*args, **kwargs)

    monkeypatch.setattr(role.world_model, "fit_transitions", recording_fit)
    role.retrain(100, should_stop=lambda: False)
    assert seen == [1] and role.retraining.value == 0

    monkeypatch.setattr(role.world_model, "fit_transitions", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        role.retrain(100, should_stop=lambda: False)
    assert role.retraining.value == 0, "a failed retraining must not leave the agent short of threads"
