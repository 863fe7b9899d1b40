"""Concurrent mode: the collector and the world-model trainer each run in their own process.

The agent trainer stays the Lightning ``fit`` of the main process. ``CollectorProcess`` and
``WorldModelTrainingProcess`` start their role when fit starts, keep the main process in step
with it (policy weights out, world-model weights in, failures noticed at every update) and stop
it when fit ends or fails. See ``configs/mbpo_async.yaml``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from tensordict import TensorDictBase

from callbacks.env_steps import showing_phase
from callbacks.lookup import callback_of
from callbacks.model_training import WorldModelTraining
from nmbrl.concurrent.collector_role import CollectorRole
from nmbrl.concurrent.cores import ThreadLending, available_cores, threads_beside
from nmbrl.concurrent.pacing import POLL_S, PacedStream, Pacing, RemoteCollection
from nmbrl.concurrent.shared import CONTEXT, SharedRealData, SharedWeights, module_weights, share_real_data
from nmbrl.concurrent.supervisor import RoleProcess
from nmbrl.concurrent.world_model_role import WorldModelRole, published_world_model
from nmbrl.data import RLDataModule
from nmbrl.errors import ConfigError, RoleFailed, check_at_least_one
from nmbrl.interrupt import interrupt
from nmbrl.schedule import next_due
from nmbrl.tracking import RoleLogger, log_now, logging_due, mlflow_run_of
from nmbrl.world_model import EnsembleWorldModel


class CollectorProcess(Callback):
    """Steps the real environment in its own process, with the latest policy the agent published.

    When fit starts, the real buffer and the env-step count move into shared memory and the
    collector process starts writing every transition into the buffer; the agent trains on it as
    it grows. Pacing (``nmbrl.concurrent.pacing.Pacing``) holds the agent to at most
    ``data.updates_per_step`` updates per real transition, and the collector to at most ``max_lead``
    steps ahead of the agent. A failure of the collector stops the run with its error.

    This callback owns the shared real data (``shared``) and hands the data module its buffer and
    stream of batches through ``RLDataModule.collect_elsewhere``.

    With ``lockstep``, the three processes keep synchronous MBPO's order exactly: the collector
    takes a transition only after the agent's ``updates_per_step`` updates on the one before, and
    with the policy they left; the world model is retrained at the env steps sync mode retrains
    it at, on the same data, and the agent waits for it before its next update
    (``WorldModelTrainingProcess``), so every rollout starts right after the retraining at its
    env step. It learns as sync mode does, and is no faster: it is the reference that the
    overlapping settings are measured against (``benchmarks/RESULTS.md``).

    Args:
        max_lead: Env steps the collector may run ahead of the step the agent needs next (null:
            unpaced). ``lockstep`` sets it to 0.
        publish_every: Agent updates between two publications of the policy weights. ``lockstep``
            publishes after each transition's updates instead.
        lockstep: Run in synchronous MBPO's order (above), the collector at normal priority.
        threads: Torch threads of the collector process.
        nice: Scheduling priority of the collector process, from 0 (normal) to 19 (lowest). Where
            the cores are short, a low priority lets it step in the moments the agent leaves a core
            idle instead of stalling the agent's threads (``nmbrl.concurrent.cores``). ``lockstep``
            sets it to 0.
        log_every_s: Seconds between two writes of the collector's metrics.
        stop_timeout_s: Seconds the collector gets to stop before it is killed.
    """

    def __init__(
        self,
        max_lead: int | None = 250,
        publish_every: int = 10,
        lockstep: bool = False,
        threads: int = 1,
        nice: int = 0,
        log_every_s: float = 10.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        check_at_least_one(publish_every=publish_every, threads=threads)
        if max_lead is not None and max_lead < 0:
            raise ConfigError(f"max_lead={max_lead} must be at least 0, or null for an unpaced collector.")
        if not 0 <= nice <= 19:
            raise ConfigError(f"nice={nice} must be from 0 (normal priority) to 19 (lowest); a higher priority needs root.")
        self.max_lead = 0 if lockstep else max_lead
        self.publish_every = publish_every
        self.lockstep = lockstep
        self.threads = threads
        # In lockstep the agent waits for every step, so the collector needs no lower priority; with one,
        # any other load on the machine starves it and the whole run with it (measured: 0.3 steps/s).
        self.nice = 0 if lockstep else nice
        self.log_every_s = log_every_s
        self.stop_timeout_s = stop_timeout_s
        self.process: RoleProcess | None = None
        self.shared: SharedRealData | None = None
        self.collection: RemoteCollection | None = None
        self.resumed_updates = 0  # the agent updates of the checkpoint resumed from

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_single_process(trainer)
        if self.shared is None:  # before any checkpoint is restored, so that its data land in shared memory
            data = trainer.datamodule
            self.shared = share_real_data(data)
            data.collect_elsewhere(self.shared.buffer, self.batch_stream)

    def batch_stream(self, data: RLDataModule) -> PacedStream:
        """The agent's batches, each waiting for the transition it follows (``RLDataModule.collect_elsewhere``)."""
        return PacedStream(data, self.collection)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning restores global_step only after on_fit_start, where the shared update count and
        # the first published policy are made: they take the restored count from here.
        self.resumed_updates = checkpoint["global_step"]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data, shared = trainer.datamodule, self.shared
        shared.env_steps.value = data.env_steps  # nonzero when resuming
        self.pacing = Pacing(data.random_steps, data.updates_per_step, self.max_lead, data.action_repeat)
        # Lockstep publishes after each transition's updates, before the collector may take the next one.
        self.publish_every = data.updates_per_step if self.lockstep else self.publish_every
        updates = max(trainer.global_step, self.resumed_updates)
        self.agent_updates = CONTEXT.Value("q", updates)
        self.policy_version = CONTEXT.Value("q", 0)
        self.policy = SharedWeights(published_policy(pl_module, updates))
        self.policy.publish(published_policy(pl_module, updates))
        self.next_publish_at = next_due(updates, self.publish_every)
        self.process = RoleProcess(self.make_role(trainer, pl_module, shared), self.stop_timeout_s, resumed_at=data.env_steps)
        self.process.start()
        self.collection = RemoteCollection(shared.env_steps, self.agent_updates, self.pacing, self.process.check)
        self._since = (time.perf_counter(), 0.0)

    def make_role(self, trainer: Trainer, pl_module: LightningModule, shared: SharedRealData) -> CollectorRole:
        data = trainer.datamodule
        return CollectorRole(
            env_name=data.env_name,
            action_repeat=data.action_repeat,
            seed=data.seed + data.env_steps,  # as RLDataModule reseeds on resume: a fresh episode
            actor=copy.deepcopy(pl_module.policy).cpu(),
            policy=self.policy,
            buffer=shared.buffer,
            env_steps=shared.env_steps,
            agent_updates=self.agent_updates,
            policy_version=self.policy_version,
            pacing=self.pacing,
            logger=RoleLogger(mlflow_run_of(trainer)),
            log_every_s=self.log_every_s,
            threads=self.threads,
            nice=self.nice,
        )

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The policy first: the collector, seeing the new update count, may step at once and acts with the newest policy.
        if trainer.global_step >= self.next_publish_at:
            self.policy.publish(published_policy(pl_module, trainer.global_step))
            self.next_publish_at = next_due(trainer.global_step, self.publish_every)
        self.agent_updates.value = trainer.global_step
        self.process.check()
        if logging_due(batch_idx, trainer):  # batches are transitions, as EnvStepMonitor counts them
            self.log_agent_side(trainer)

    def log_agent_side(self, trainer: Trainer) -> None:
        """The agent's share of the pacing: the policy version it published and how long it waited for env steps."""
        now, waited = time.perf_counter(), self.collection.waited_s
        since, waited_before = self._since
        self._since = (now, waited)
        log_now(
            trainer,
            {
                "agent/policy_version": self.policy.version.value,
                "agent/wait_fraction": (waited - waited_before) / max(now - since, 1e-9),
                "pacing/update_ratio": self.pacing.update_ratio(trainer.datamodule.env_steps, trainer.global_step),
            },
        )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stop()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        with contextlib.suppress(RoleFailed):  # the exception being handled is the one to report
            self.stop()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        with contextlib.suppress(RoleFailed):
            self.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class WorldModelTrainingProcess(WorldModelTraining):
    """Retrains the world model in its own process, over and over, on the shared real buffer.

    The process starts a retraining as soon as ``every`` new env steps have arrived since the last
    one began, and publishes each result with a version number. Before each agent update this
    callback copies the newest version into its own world model, which the rollouts use. Needs
    ``CollectorProcess`` (the ``collection`` group), which shares the real buffer.

    Where the cores cannot hold the agent's threads and the process's together, the agent drops to
    what is left while a retraining runs (``nmbrl.concurrent.cores.ThreadLending``), logged as
    ``agent/torch_threads``.

    Rollouts (``BranchedRollouts``) wait for the retraining that starts at their env step, as in
    synchronous MBPO, instead of imagining with the model one retraining older; the agent keeps
    training meanwhile. In lockstep (``CollectorProcess(lockstep=True)``) the agent waits too:
    at each env step where sync mode retrains, it takes no update until the model trained on
    the data up to that step has arrived (the time is logged as ``agent/world_model_wait_s``).

    Args:
        world_model: The ensemble to train.
        every: New env steps needed before the next retraining starts.
        threads: Torch threads of the world-model process.
        stop_timeout_s: Seconds the process gets to stop (it finishes its epoch) before it is killed.
    """

    lags_behind = True

    def __init__(self, world_model: EnsembleWorldModel, every: int = 250, threads: int = 1, stop_timeout_s: float = 10.0) -> None:
        super().__init__(world_model, every)
        check_at_least_one(threads=threads)
        self.threads = threads
        self.stop_timeout_s = stop_timeout_s
        self.process: RoleProcess | None = None
        self.lockstep = False
        self.waited_s = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        collector = collector_process_of(trainer)
        self.lockstep = collector.lockstep
        self.lags_behind = not self.lockstep  # in lockstep the agent waits for each model instead
        self.in_use = published_world_model(self.world_model, self.trained_on)
        self.weights = SharedWeights(self.in_use)
        agent_threads = torch.get_num_threads()
        while_retraining = threads_beside(agent_threads, self.threads, available_cores())
        self.lending = ThreadLending(CONTEXT.Value("b", 0, lock=False), agent_threads, while_retraining)
        self.process = RoleProcess(self.make_role(trainer, collector.shared), self.stop_timeout_s, resumed_at=trainer.datamodule.env_steps)
        self.process.start()

    def make_role(self, trainer: Trainer, shared: SharedRealData) -> WorldModelRole:
        return WorldModelRole(
            world_model=copy.deepcopy(self.world_model).move_to("cpu"),
            weights=self.weights,
            buffer=shared.buffer,
            env_steps=shared.env_steps,
            # A resumed run keeps its schedule: the next retraining is the one its checkpoint has due.
            first_at=max(trainer.datamodule.random_steps + 1, self.next_training_at),
            every=self.every,
            retraining=self.lending.retraining,
            logger=RoleLogger(mlflow_run_of(trainer)),
            threads=self.threads,
        )

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # Replaces the in-process retraining of WorldModelTraining: take the newest published version.
        env_steps = trainer.datamodule.env_steps
        if self.lockstep and env_steps >= self.next_training_at and self.trained_on < env_steps:
            with showing_phase(trainer, "waiting for the world-model process"):
                self.wait_for_model_trained_on(env_steps)
        self.take_newest_model()
        self.process.check()
        threads = self.lending.apply()
        if logging_due(batch_idx, trainer):  # batches are transitions, as EnvStepMonitor counts them
            log_now(
                trainer,
                {
                    "agent/world_model_version": self.version,
                    "agent/world_model_age_steps": env_steps - self.trained_on,
                    "agent/world_model_wait_s": self.waited_s,
                    "agent/torch_threads": threads,
                },
            )

    def take_newest_model(self) -> bool:
        """Copy the newest published model into the one rollouts use, if it is newer; whether it was."""
        version = self.weights.read_into(self.in_use, newer_than=self.version)
        if version is None:
            return False
        self.version = version
        self.trained_on = int(self.in_use["env_steps"])
        self.next_training_at = next_due(self.trained_on, self.every)
        return True

    def wait_for_model_trained_on(self, env_steps: int) -> None:
        """Block until a model trained on the data up to ``env_steps`` is in use (lockstep)."""
        started = time.perf_counter()
        while self.trained_on < env_steps:
            if not self.take_newest_model():
                self.process.check()
                interrupt.raise_if_requested()  # waiting is a safe point to stop at
                time.sleep(POLL_S)
        self.waited_s += time.perf_counter() - started

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stop()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        with contextlib.suppress(RoleFailed):
            self.stop()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        with contextlib.suppress(RoleFailed):
            self.stop()

    def stop(self) -> None:
        """Stop the process and take its final weights and optimizer state, for the final checkpoint."""
        if self.process is None:
            return
        self.lending.restore()
        final = self.process.stop()
        if final is not None:
            state = torch.load(io.BytesIO(final), map_location=self.world_model.device, weights_only=True)
            self.world_model.load_state_dict(state["world_model"])
            self.world_model.optimizer.load_state_dict(state["optimizer"])
            if state["trained_on"] is not None:  # None: stopped before its first retraining
                self.trained_on = state["trained_on"]


def published_policy(pl_module: LightningModule, agent_updates: int) -> TensorDictBase:
    """The policy weights as the collector receives them, stamped with the agent update they come from."""
    return module_weights(pl_module.policy).set("agent_updates", torch.tensor(agent_updates))


def collector_process_of(trainer: Trainer) -> CollectorProcess:
    """The run's ``CollectorProcess``, which holds the shared real data."""
    return callback_of(
        trainer,
        CollectorProcess,
        "WorldModelTrainingProcess trains on the real buffer that CollectorProcess shares: add "
        "`collection: {class_path: callbacks.CollectorProcess}` to the config (see configs/mbpo_async.yaml).",
    )


def check_single_process(trainer: Trainer) -> None:
    if trainer.world_size > 1:
        raise ConfigError(
            f"Concurrent mode runs on one device, but the trainer has {trainer.world_size} processes: "
            "remove --trainer.strategy/--trainer.devices, or use configs/mbpo.yaml for multi-device training."
        )
