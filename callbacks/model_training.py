"""Model retraining: refit the ensemble on the whole real buffer every ``every`` env steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_info
from tensordict import TensorDictBase

from callbacks.env_steps import showing_phase
from callbacks.lookup import callback_of
from nmbrl.checkpoints import take_configured_hyperparameters
from nmbrl.envs.termination import termination_rule
from nmbrl.errors import ConfigError
from nmbrl.interrupt import stop_requested
from nmbrl.random_streams import WORLD_MODEL, RandomStream
from nmbrl.schedule import next_due
from nmbrl.tracking import log_now
from nmbrl.world_model import EnsembleWorldModel


class WorldModelTraining(Callback):
    """Owns the world model and retrains it on all real data every ``every`` env steps.

    Under DDP the ranks' real data are gathered, rank 0 trains, and the weights, normaliser
    statistics and elites are broadcast, so every rank imagines with the same model.

    ``version`` counts the models the run has used and ``trained_on`` holds the env steps of the
    data the one in use was trained on, so that rollouts can tell how fresh it is.

    Args:
        world_model: The ensemble to train.
        every: Env steps between retrainings (MBPO's ``model_train_freq``).
    """

    #: Whether the model in use may be older than the retraining due at the current env step
    #: (concurrent mode, where it retrains beside the agent), so that a rollout should wait for a newer one.
    lags_behind = False

    def __init__(self, world_model: EnsembleWorldModel, every: int = 250) -> None:
        if every < 1:
            raise ConfigError(f"every={every}: the model is retrained every `every` env steps, so it must be at least 1.")
        self.world_model = world_model
        self.every = every
        self.next_training_at = 0
        self.version = 0
        self.trained_on = 0
        self.stream: RandomStream | None = None  # the retrainings' random numbers (nmbrl.random_streams)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.world_model.network is None:
            data = trainer.datamodule
            self.world_model.build(data.specs, termination_rule(data.env_name))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Here, not in setup: Lightning moves the agent to its device (a GPU) after the setup hooks.
        # Rollouts need the world model beside the policy that acts in them.
        self.world_model.move_to(pl_module.device)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        env_steps = trainer.datamodule.env_steps
        if env_steps < self.next_training_at:
            return
        self.next_training_at = next_due(env_steps, self.every)
        started = time.perf_counter()
        if self.stream is None:  # concurrent mode's world-model process draws from the same stream
            self.stream = RandomStream.of_run(WORLD_MODEL)
        with showing_phase(trainer, "world model: retraining") as show, self.stream.active():
            metrics = train_world_model(
                trainer.strategy,
                self.world_model,
                trainer.datamodule.real_buffer[:],
                on_epoch=lambda epochs, mse: show(f"world model: epoch {epochs}, holdout MSE {mse:.3g}"),
            )
        self.version += 1
        self.trained_on = env_steps
        log_now(trainer, {**metrics, "time/model_training_s": time.perf_counter() - started})

    def state_dict(self) -> dict[str, Any]:
        return {
            "world_model": self.world_model.state_dict(),
            # To rebuild the ensemble outside a run (EnsembleWorldModel.from_checkpoint); a resumed run has its config.
            "hparams": dict(self.world_model.hparams),
            "optimizer": self.world_model.optimizer.state_dict(),
            "next_training_at": self.next_training_at,
            "trained_on": self.trained_on,
            **({"stream": self.stream.state_dict()} if self.stream is not None else {}),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.world_model.load_state_dict(state_dict["world_model"])
        changes = take_configured_hyperparameters(state_dict["optimizer"], self.world_model.optimizer)
        if changes:
            rank_zero_info(f"world-model optimizer, from the config: {', '.join(changes)} (its moment estimates are the checkpoint's).")
        self.world_model.optimizer.load_state_dict(state_dict["optimizer"])
        self.next_training_at = state_dict["next_training_at"]
        self.trained_on = state_dict.get("trained_on", 0)  # absent from checkpoints before it was kept
        if "stream" in state_dict:  # absent in concurrent mode and in checkpoints before it was kept
            self.stream = RandomStream.from_state_dict(state_dict["stream"])


def train_world_model(
    strategy: Strategy,
    world_model: EnsembleWorldModel,
    real: TensorDictBase,
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Fit the ensemble to the real transitions of all ranks; every rank ends with rank 0's model.

    ``on_epoch``: see ``EnsembleWorldModel.fit_transitions``.
    """
    real = gather_transitions(strategy, real.to(world_model.device))
    metrics = world_model.fit_transitions(real, should_stop=stop_requested, on_epoch=on_epoch) if strategy.is_global_zero else {}
    if strategy.world_size > 1:
        state = strategy.broadcast(world_model.state_dict() if strategy.is_global_zero else None, src=0)
        world_model.load_state_dict(state)
        metrics = strategy.broadcast(metrics, src=0)
    return metrics


def gather_transitions(strategy: Strategy, data: TensorDictBase) -> TensorDictBase:
    """Concatenate every rank's ``data`` (ranks collect the same number of steps)."""
    if strategy.world_size == 1:
        return data

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        # torch.distributed's own all_gather: Lightning's strategy.all_gather goes through the autograd
        # version (torch.distributed.nn), which torch 2.13 deprecates with a warning on every rank.
        sent = (tensor.to(torch.float32) if tensor.dtype == torch.bool else tensor).contiguous()
        parts = [torch.empty_like(sent) for _ in range(strategy.world_size)]
        torch.distributed.all_gather(parts, sent)
        return torch.cat(parts).to(tensor.dtype)

    return data.apply(gather, batch_size=[strategy.world_size * data.shape[0]])


def world_model_of(trainer: Trainer) -> EnsembleWorldModel:
    """The world model of the run, owned by its ``WorldModelTraining`` callback."""
    return model_training_of(trainer).world_model


def model_training_of(trainer: Trainer) -> WorldModelTraining:
    """The run's ``WorldModelTraining`` callback."""
    return callback_of(
        trainer,
        WorldModelTraining,
        "BranchedRollouts needs a world model: add a callbacks.WorldModelTraining entry before it in trainer.callbacks "
        "(see configs/mbpo.yaml).",
    )
