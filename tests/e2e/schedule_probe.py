"""Injected into a CLI run (``--trainer.callbacks+=schedule_probe.RecordSchedule``): what each agent batch saw."""

from __future__ import annotations

import json
import os

import torch
from lightning.pytorch import Callback

from callbacks.concurrent import collector_process_of
from callbacks.model_training import model_training_of


class RecordSchedule(Callback):
    """Writes, per training batch, the env steps it followed, the updates made after it, and the env
    steps of the world model's data and of the next rollout, to ``$NMBRL_PROBE_DIR/schedule.json``."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollouts = next(c for c in trainer.callbacks if type(c).__name__ == "BranchedRollouts")
        training = model_training_of(trainer)
        self.rows.append([trainer.datamodule.env_steps, trainer.global_step, training.trained_on, rollouts.next_rollout_at])

    def on_train_end(self, trainer, pl_module) -> None:
        with open(os.path.join(os.environ["NMBRL_PROBE_DIR"], "schedule.json"), "w") as file:
            json.dump(self.rows, file)


class RecordFirstPolicy(Callback):
    """Writes, when training starts (before any batch has ended), the agent's update count, the
    version and update stamp of the policy the collector was handed, the run's seed and the seeds
    of the role processes, to ``$NMBRL_PROBE_DIR/first_policy.json``."""

    def on_train_start(self, trainer, pl_module) -> None:
        collector = collector_process_of(trainer)
        version, weights = collector.policy.read()
        record = {"global_step": trainer.global_step, "version": version, "stamp": int(weights["agent_updates"])}
        record["run_seed"] = torch.initial_seed()
        record["role_seeds"] = {role.name: role.seed for role in (collector.process, model_training_of(trainer).process)}
        with open(os.path.join(os.environ["NMBRL_PROBE_DIR"], "first_policy.json"), "w") as file:
            json.dump(record, file)
