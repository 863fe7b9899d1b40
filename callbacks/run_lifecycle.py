"""Run lifecycle: what makes a checkpoint resumable exactly, and a clean stop on Ctrl+C, SIGTERM or divergence.

Added to every run by the CLI (it is not a config choice): without it a checkpoint would lack
the RNG states and the MLflow run it belongs to.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from nmbrl.checkpoints import CHECKPOINT_KEY
from nmbrl.errors import RoleFailed, TrainingDiverged
from nmbrl.interrupt import interrupt
from nmbrl.random_streams import checkpoint_states, main_generator_states, set_main_generator_states, states_from_checkpoint
from nmbrl.tracking import EnvStepMLFlowLogger, run_dir

# The exceptions that end fit with a final checkpoint: each is raised at a safe point, between updates.
# So does KeyboardInterrupt, named by the signal that asked for it (``interrupt.reason``).
STOPPED_BY = {TrainingDiverged: "divergence", RoleFailed: "a failed role"}


class RunLifecycle(Callback):
    """Saves RNG states and the run's identity in checkpoints; stops cleanly on Ctrl+C and SIGTERM.

    - Checkpoints get an ``"nmbrl"`` record (MLflow run id and tracking URI, environment, sizes,
      env steps) that ``cli.py`` reads before resuming or testing, and the torch, numpy and
      Python RNG states, restored on resume.
    - ``test`` leaves the MLflow run's status as training left it. Ctrl+C or SIGTERM stops it at
      once, and the CLI exits with status 130 or 143.
    - During ``fit`` the first Ctrl+C or SIGTERM is deferred to the end of the current env step's
      agent updates (see ``nmbrl.interrupt``); then, as after a divergence stop, a final checkpoint
      is written to ``checkpoints/last.ckpt`` and the MLflow run ends as ``KILLED`` (``FAILED`` for
      divergence). The CLI then exits with status 130 (Ctrl+C) or 143 (SIGTERM), as a shell
      reports a command stopped by that signal. Under DDP every rank stops after the same batch,
      whichever ranks the signal reached.
      A failed concurrent-mode role (``RoleFailed``) gets the same final checkpoint; this callback
      comes after the role callbacks, so they have stopped their processes by then.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            interrupt.install()
        elif isinstance(trainer.logger, EnvStepMLFlowLogger):
            trainer.logger.keep_status = True  # testing a checkpoint leaves its run's status alone

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        interrupt.uninstall()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        interrupt.take_over()  # Lightning has set its own SIGTERM handler since setup

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Testing keeps no state to write whole: a signal stops it at once. Lightning's own SIGTERM
        # handler (set since setup) would only print a line and let testing run to the end, exit status 0.
        interrupt.install(deferred=False)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if stop_agreed(trainer):
            raise KeyboardInterrupt

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_record(trainer)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Before Lightning restores its loops from the same dict.
        if trainer.state.fn == "fit":
            reopen_cut_epoch(checkpoint)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict["rng"])

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            # Lightning exits with status 1; the CLI makes it the shell's 130 or 143.
            interrupt.stopped_by = interrupt.requested_by or signal.SIGINT
            stopped_by = interrupt.reason
        else:
            stopped_by = next((name for kind, name in STOPPED_BY.items() if isinstance(exception, kind)), None)
        if stopped_by is None or trainer.state.fn != "fit":
            return
        path = final_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint to resume from, said outright
        # A message, not a warning: a warning would also print this source line to the user's terminal.
        rank_zero_info(f"Stopped by {stopped_by} at {trainer.datamodule.env_steps} env steps; checkpoint written to {path}.")
        if isinstance(exception, KeyboardInterrupt) and hasattr(trainer.logger, "end_status"):
            trainer.logger.end_status = "KILLED"


def stop_agreed(trainer: Trainer) -> bool:
    """Whether to stop after this batch: a signal asked for it here or, under DDP, on any rank.

    Every DDP rank must stop after the same batch. ``kill`` reaches rank 0 alone, and even Ctrl+C
    reaches the ranks at different points; a rank that stopped on its own would leave the others
    waiting for it in the next collective forever. So the ranks decide from one all-reduce of
    their requests, once per batch (only with several processes), and a signal that arrives after
    it waits for the next batch.
    """
    if trainer.world_size == 1:
        return interrupt.requested
    strategy = trainer.strategy
    signum = torch.tensor(int(interrupt.requested_by or 0), device=strategy.root_device)
    agreed = int(strategy.reduce(signum, reduce_op="max"))
    if agreed:
        interrupt.request(agreed)
    return bool(agreed)


def checkpoint_record(trainer: Trainer) -> dict[str, Any]:
    """The ``"nmbrl"`` record of a checkpoint: the MLflow run, the environment and the sizes it was trained on."""
    data, logger = trainer.datamodule, trainer.logger
    specs = data.specs
    return {
        "run_id": getattr(logger, "run_id", None),
        "tracking_uri": getattr(logger, "_tracking_uri", None),
        "env": data.env_name,
        "observation_dim": specs.observation_dim,
        "action_dim": specs.action_dim,
        "env_steps": data.env_steps,
        "action_repeat": data.action_repeat,
        # So that the agent can be rebuilt without its environment (``SACAgent.load_from_checkpoint``).
        "action_low": specs.action_spec.space.low.tolist(),
        "action_high": specs.action_spec.space.high.tolist(),
    }


def reopen_cut_epoch(checkpoint: dict[str, Any]) -> bool:
    """Resume an epoch that ``--trainer.max_steps`` or ``--trainer.max_time`` cut short inside it, not after it.

    Lightning ends such an epoch with its epoch-end hooks, and the checkpoint they write counts it
    as processed: a run resumed from it would start the next epoch, and end one epoch short of the
    budget (``random_steps + max_epochs * epoch_length`` env steps). When the checkpoint was
    written after the epoch-end hooks but before the epoch's last batch, its epoch progress is set
    back to "not processed", as a checkpoint from inside the epoch (Ctrl+C) has it, so the resumed
    run finishes that epoch first. Returns whether it did.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if progress is None or batches is None:
        return False
    total, current = progress["total"], progress["current"]
    after_epoch_end_hooks = total["ready"] == total["started"] == total["processed"] == total["completed"] + 1
    if not after_epoch_end_hooks or batches["is_last_batch"]:
        return False
    total["processed"] -= 1
    current["processed"] -= 1
    return True


def final_checkpoint_path(trainer: Trainer) -> Path:
    """``last.ckpt`` where the run's checkpoints go, so ``--ckpt_path last`` finds it."""
    callback = trainer.checkpoint_callback
    folder = Path(callback.dirpath) if callback is not None and callback.dirpath else run_dir(trainer) / "checkpoints"
    return folder / "last.ckpt"


def rng_states() -> dict[str, Any]:
    """The global RNG states, as tensors and tuples (loadable with ``torch.load(weights_only=True)``)."""
    states = checkpoint_states(main_generator_states())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    set_main_generator_states(states_from_checkpoint(states))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
