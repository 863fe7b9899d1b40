"""The world-model role: retrains the ensemble on the shared real buffer, again and again, publishing each result."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

import torch
from tensordict import TensorDictBase

from nmbrl.concurrent.pacing import POLL_S
from nmbrl.concurrent.shared import SharedReplayBuffer, SharedWeights, module_weights
from nmbrl.concurrent.supervisor import StopSignal
from nmbrl.random_streams import WORLD_MODEL
from nmbrl.schedule import next_due
from nmbrl.tracking import RoleLogger
from nmbrl.world_model import EnsembleWorldModel


@dataclass
class WorldModelRole:
    """Everything the world-model process needs; pickled into it when it starts.

    Args:
        world_model: A private copy of the built ensemble, with its optimizer.
        weights: Where each retrained version is published, stamped with ``env_steps`` (the data it saw).
        buffer: The shared real buffer it trains on.
        env_steps: The run's env-step count, written by the collector.
        first_at: Env steps the first retraining waits for (the end of random exploration, or
            the next retraining due in a resumed run).
        every: Later retrainings start at the first env-step count they see at or past the next
            multiple of ``every`` (``nmbrl.schedule.next_due``), as ``WorldModelTraining`` schedules
            them; in lockstep that count is the multiple itself.
        retraining: Set to 1 while a retraining runs, so that the agent can lend its threads
            (``nmbrl.concurrent.cores.ThreadLending``).
        logger: Where the role's metrics go.
        threads: Torch threads of the process.
        nice: Scheduling priority of the process.
    """

    world_model: EnsembleWorldModel
    weights: SharedWeights
    buffer: SharedReplayBuffer
    env_steps: Synchronized
    first_at: int
    every: int
    retraining: Synchronized
    logger: RoleLogger
    threads: int = 1
    nice: int = 0
    name: str = WORLD_MODEL  # also the name of its random stream (nmbrl.random_streams)

    def run(self, should_stop: StopSignal) -> bytes:
        """Retrain while the role runs; return the final weights and optimizer state (``torch.save`` bytes)."""
        trained_on, due_at = None, self.first_at
        while not should_stop():
            env_steps = self.env_steps.value
            if env_steps < due_at:
                time.sleep(POLL_S)
                continue
            self.retrain(env_steps, should_stop)
            trained_on, due_at = env_steps, next_due(env_steps, self.every)
        return self.final_state(trained_on)

    def retrain(self, env_steps: int, should_stop: StopSignal) -> None:
        """Fit the ensemble to the whole real buffer, publish it, and log how long it took."""
        start = time.perf_counter()
        self.retraining.value = 1
        try:
            metrics = self.world_model.fit_transitions(self.buffer[:], should_stop=should_stop)
        finally:
            self.retraining.value = 0
        seconds = time.perf_counter() - start
        version = self.weights.publish(published_world_model(self.world_model, env_steps))
        now = self.env_steps.value
        metrics |= {
            "world_model/version": version,
            "world_model/updates_per_s": metrics["model/gradient_steps"] / seconds,
            "time/model_training_s": seconds,  # the name synchronous MBPO logs it under
            "world_model/data_age_steps": now - env_steps,  # env steps collected while it trained
        }
        self.logger.log(metrics, now)

    def final_state(self, trained_on: int | None) -> bytes:
        """The weights, optimizer state and env steps of their data, for the parent's final checkpoint."""
        # Bytes rather than tensors: tensors sent through a queue vanish if the sender exits first.
        state = {
            "world_model": self.world_model.state_dict(),
            "optimizer": self.world_model.optimizer.state_dict(),
            "trained_on": trained_on,
        }
        stream = io.BytesIO()
        torch.save(state, stream)
        return stream.getvalue()


def published_world_model(world_model: EnsembleWorldModel, env_steps: int) -> TensorDictBase:
    """The world model's weights and statistics, stamped with the env steps of the data it was trained on."""
    return module_weights(world_model).set("env_steps", torch.tensor(env_steps))
