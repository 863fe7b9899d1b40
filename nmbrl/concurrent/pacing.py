"""Pacing between the collector and the agent, and the agent's stream of batches in concurrent mode."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

from tensordict import TensorDictBase

from nmbrl.data.module import RLDataModule, StepStream
from nmbrl.interrupt import interrupt

POLL_S = 0.002


@dataclass(frozen=True)
class Pacing:
    """How far the agent and the collector may run ahead of each other.

    The agent keeps synchronous MBPO's schedule as a ceiling: update ``u`` waits for real transition
    ``u // updates_per_step + 1`` after exploration, that is for env step
    ``random_steps + (u // updates_per_step + 1) * action_repeat``, so there are never more than
    ``updates_per_step`` agent updates per real transition. The collector may run ``max_lead`` env steps
    past the step the agent needs next (``None``: as fast as it can). Both rules together cannot
    deadlock: the agent waits only while the collector is behind that step, the collector only
    while it is at least ``max_lead`` past it.
    """

    random_steps: int
    updates_per_step: int
    max_lead: int | None
    action_repeat: int = 1

    def env_steps_needed(self, updates: int) -> int:
        """Env steps the agent must see before its update number ``updates`` (counted from 0)."""
        return self.random_steps + (updates // self.updates_per_step + 1) * self.action_repeat

    def collector_may_step(self, env_steps: int, updates: int) -> bool:
        return self.max_lead is None or env_steps < self.env_steps_needed(updates) + self.max_lead

    def update_ratio(self, env_steps: int, updates: int) -> float:
        """Agent updates per real transition after exploration, held at ``updates_per_step`` at most."""
        return updates / max((env_steps - self.random_steps) // self.action_repeat, 1)


@dataclass
class RemoteCollection:
    """The agent's view of a collector running in another process.

    Args:
        env_steps: Env steps taken so far, counted by the collector.
        agent_updates: The agent's updates so far, which the collector paces itself by.
        pacing: When the agent must wait for the collector.
        check_collector: Raises if the collector has stopped; called while waiting, so that a dead
            collector ends the run instead of hanging it.
    """

    env_steps: Synchronized
    agent_updates: Synchronized
    pacing: Pacing
    check_collector: Callable[[], None]
    waited_s: float = 0.0

    def wait_for_env_steps(self, needed: int) -> int:
        """Block until the collector has taken ``needed`` env steps; returns the current count."""
        start = time.perf_counter()
        while (env_steps := self.env_steps.value) < needed:
            self.check_collector()
            interrupt.raise_if_requested()  # waiting is a safe point to stop at
            time.sleep(POLL_S)
        self.waited_s += time.perf_counter() - start
        return env_steps


class PacedStream(StepStream):
    """The training "dataloader" of concurrent mode: per real transition, one ``updates_per_step x batch_size`` batch.

    Like ``TrainingStream``, but the env steps come from the collector process: the batches of
    transition ``t`` (counted after exploration) wait until the collector has taken it, and
    refresh the data module's ``env_steps``. An epoch ends after ``(current_epoch + 1) * len(self)``
    transitions in all, so an epoch resumed midway takes only the transitions it has left.
    """

    def __init__(self, data: RLDataModule, collection: RemoteCollection) -> None:
        super().__init__(data)
        self.collection = collection

    def __iter__(self) -> Iterator[TensorDictBase]:
        data, pacing, trainer = self.data, self.collection.pacing, self.data.trainer
        done = -(-trainer.global_step // data.updates_per_step)  # transitions trained on so far
        # The collector paces itself by this count: make it the agent's own before waiting. A count
        # behind it would leave a collector max_lead past exploration waiting for updates that wait for it.
        self.collection.agent_updates.value = trainer.global_step
        for transition in range(done, (trainer.current_epoch + 1) * len(self)):
            data.env_steps = self.collection.wait_for_env_steps(pacing.env_steps_needed(transition * data.updates_per_step))
            yield data.sample_step_batches()
