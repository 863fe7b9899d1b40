"""Pacing: the agent keeps synchronous MBPO's schedule as a ceiling, the collector stays close ahead."""

from __future__ import annotations

import itertools
import multiprocessing
from types import SimpleNamespace

import pytest

from nmbrl.concurrent.pacing import Pacing, PacedStream, RemoteCollection


def test_the_agent_needs_the_exploration_steps_then_one_step_per_updates_per_step_updates():
    pacing = Pacing(random_steps=100, updates_per_step=5, max_lead=0)
    assert [pacing.env_steps_needed(u) for u in (0, 4, 5, 9, 10)] == [101, 101, 102, 102, 103]


def test_the_collector_stops_max_lead_steps_past_the_step_the_agent_needs():
    pacing = Pacing(random_steps=100, updates_per_step=5, max_lead=3)
    assert pacing.collector_may_step(env_steps=103, updates=0)
    assert not pacing.collector_may_step(env_steps=104, updates=0)
    assert pacing.collector_may_step(env_steps=104, updates=5)


def test_an_unpaced_collector_never_waits():
    pacing = Pacing(random_steps=0, updates_per_step=1, max_lead=None)
    assert pacing.collector_may_step(env_steps=10**9, updates=0)


def test_agent_and_collector_never_wait_for_each_other_at_once():
    for max_lead, updates_per_step, action_repeat in itertools.product((0, 1, 7), (1, 3), (1, 4)):
        pacing = Pacing(random_steps=8, updates_per_step=updates_per_step, max_lead=max_lead, action_repeat=action_repeat)
        for env_steps, updates in itertools.product(range(40), range(60)):
            agent_waits = env_steps < pacing.env_steps_needed(updates)
            assert not (agent_waits and not pacing.collector_may_step(env_steps, updates))


def test_update_ratio_counts_from_the_end_of_exploration():
    assert Pacing(random_steps=100, updates_per_step=5, max_lead=None).update_ratio(env_steps=120, updates=100) == 5.0


def test_a_resumed_agent_tells_the_collector_its_update_count_before_waiting():
    # Resuming: the shared update count is created before Lightning restores global_step, so it
    # reads 0, while the restored env steps are past the exploration steps plus max_lead. The
    # stream must announce the restored count before it waits, or the collector (played here by
    # the wait loop's check, stepping whenever pacing allows) never moves and neither does the agent.
    pacing = Pacing(random_steps=200, updates_per_step=1, max_lead=100)
    env_steps, agent_updates = multiprocessing.Value("q", 301), multiprocessing.Value("q", 0)
    stalls = []

    def collector_turn() -> None:
        if pacing.collector_may_step(env_steps.value, agent_updates.value):
            env_steps.value += 1
        elif len(stalls) > 100:
            pytest.fail("the agent waits for env steps while the collector waits for agent updates")
        else:
            stalls.append(env_steps.value)

    trainer = SimpleNamespace(global_step=101, current_epoch=1)
    data = SimpleNamespace(
        trainer=trainer, updates_per_step=1, epoch_length=100, env_steps=301,
        transitions=lambda env_steps: env_steps, sample_step_batches=lambda: "batch",
    )  # fmt: skip
    stream = PacedStream(data, RemoteCollection(env_steps, agent_updates, pacing, collector_turn))

    assert next(iter(stream)) == "batch"
    assert agent_updates.value == 101 and data.env_steps == 302
