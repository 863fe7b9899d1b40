"""Branched rollouts: fill the model buffer with short imagined trajectories from real states."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.env_steps import showing_phase
from callbacks.model_training import model_training_of
from nmbrl.data import model_buffer_capacity
from nmbrl.errors import ConfigError, check_at_least_one
from nmbrl.rollouts import branched_rollout, check_rollout_schedule, rollout_horizon
from nmbrl.schedule import next_due
from nmbrl.tracking import log_now


class BranchedRollouts(Callback):
    """Every ``every`` env steps, roll the current policy out in the world model from real states.

    Where the world model retrains beside the agent (concurrent mode), a rollout that is due waits
    for a model newer than the last rollout's, the one retrained on the env steps up to it; the
    agent keeps training meanwhile. Logged: ``rollout/world_model_age_steps``, env steps the model
    has not seen.

    The horizon follows ``schedule`` over epochs; the model buffer keeps ``retain_epochs`` epochs
    of imagined data (MBPO's formula) and is resized, not wiped, when the horizon grows.

    Args:
        every: Env steps between rollouts (MBPO rolls out right after each retraining).
        batch_size: Real start states per rollout (MBPO's ``rollout_batch_size``).
        chunk_size: Start states rolled out together: a larger batch runs in chunks of this many, one
            after the other, so that a rollout's working memory stays bounded (about 4 stored
            transitions per imagined step of a chunk; the Humanoid paper config's 100,000 states x
            24 steps would take about 27 GB in one pass). The imagined data is the same in kind and
            buffer order; only the random draws differ from one pass, and ``drop_uncertain``'s
            threshold is each chunk's. A batch of at most ``chunk_size`` rolls out exactly as in one pass.
        schedule: ``[epoch_start, epoch_end, min_horizon, max_horizon]``: the horizon grows linearly between the two epochs.
        retain_epochs: Epochs of imagined data the model buffer holds.
        drop_uncertain: Fraction of imagined steps, those the model is least certain of, left out
            of the model buffer together with the rest of their rollout. 0 keeps all, as in MBPO.
            A few percent stops the policy from exploiting the model where it is wrong, for example
            at contacts it cannot resolve (see ``nmbrl.rollouts.confident_mask``).
    """

    def __init__(
        self,
        every: int = 250,
        batch_size: int = 100_000,
        chunk_size: int = 20_000,
        schedule: list[int] = [20, 100, 1, 1],
        retain_epochs: int = 1,
        drop_uncertain: float = 0.0,
    ) -> None:
        check_rollout_schedule(schedule)
        check_at_least_one(every=every, batch_size=batch_size, chunk_size=chunk_size, retain_epochs=retain_epochs)
        if not 0.0 <= drop_uncertain < 1.0:
            raise ConfigError(
                f"drop_uncertain={drop_uncertain} must lie in [0, 1): it is the fraction of imagined steps left out."
            )
        self.drop_uncertain = drop_uncertain
        self.every = every
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.schedule = schedule
        self.retain_epochs = retain_epochs
        self.next_rollout_at = 0
        self.rolled_out_with: int | None = None  # the world-model version of the last rollout

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        data, training = trainer.datamodule, model_training_of(trainer)
        world_model = training.world_model
        # No model buffer yet with a trained model: resumed from a checkpoint without imagined data.
        due = data.env_steps >= self.next_rollout_at or data.model_buffer is None
        if not due or not world_model.trained:
            return
        if training.lags_behind and training.version == self.rolled_out_with:
            return  # its retraining on the steps up to here is under way: roll out with the result
        self.rolled_out_with = training.version
        self.next_rollout_at = next_due(data.env_steps, self.every)
        started = time.perf_counter()
        horizon = rollout_horizon(trainer.current_epoch, self.schedule)
        data.resize_model_buffer(
            model_buffer_capacity(horizon, self.batch_size, data.epoch_length, self.every, self.retain_epochs)
        )
        kept = 0
        with showing_phase(trainer, f"rollout: {self.batch_size} states x {horizon} steps"):
            for start in data.real_buffer.sample(self.batch_size).split(self.chunk_size):
                imagined = branched_rollout(world_model, data.env, pl_module.policy, start, horizon, self.drop_uncertain)
                data.model_buffer.extend(imagined.cpu())
                kept += imagined.shape[0]
        log_now(
            trainer,
            {
                "rollout/horizon": horizon,
                "rollout/model_buffer_size": len(data.model_buffer),
                "rollout/kept_fraction": kept / (self.batch_size * horizon),
                "rollout/world_model_age_steps": data.env_steps - training.trained_on,
                "time/rollout_s": time.perf_counter() - started,
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return {"next_rollout_at": self.next_rollout_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_rollout_at = state_dict["next_rollout_at"]
