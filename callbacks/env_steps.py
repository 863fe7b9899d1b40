"""Env-step bookkeeping: the step count in the progress bar, throughput and training returns."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from nmbrl.tracking import log_now, logging_due


class EnvStepMonitor(Callback):
    """Shows ``env_steps`` in the progress bar; logs throughput and finished episodes' returns.

    Args:
        window_s: Seconds over which ``time/env_steps_per_s`` and ``time/updates_per_s`` are averaged.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._since: tuple[float, int, int] | None = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        data = trainer.datamodule
        last_of_epoch = batch_idx == trainer.num_training_batches - 1  # the bar then matches the evaluation's count
        if logging_due(batch_idx, trainer) or last_of_epoch:
            pl_module.log("env_steps", float(data.env_steps), prog_bar=True, logger=False)
        if self._since is None:
            self._since = (time.perf_counter(), data.env_steps, trainer.global_step)
        elif time.perf_counter() - self._since[0] >= self.window_s:
            self.log_throughput(trainer)
        returns = data.pop_episode_returns()
        if returns:
            log_now(trainer, {"train/episode_return": sum(returns) / len(returns)})

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._since is not None:
            self.log_throughput(trainer)

    def log_throughput(self, trainer: Trainer) -> None:
        """Env steps and agent updates per second since the last report (evaluation time included)."""
        now = time.perf_counter()
        elapsed = max(now - self._since[0], 1e-9)
        rates = {
            "time/env_steps_per_s": (trainer.datamodule.env_steps - self._since[1]) / elapsed,
            "time/updates_per_s": (trainer.global_step - self._since[2]) / elapsed,
        }
        self._since = (now, trainer.datamodule.env_steps, trainer.global_step)
        log_now(trainer, rates)


class EnvStepProgressBar(TQDMProgressBar):
    """Lightning's progress bar, with ``env_steps`` shown as the whole number it is, and the phase
    that holds up the agent's updates (retraining, rollout, evaluation) while it runs.

    Lightning logs every value as a float, and tqdm writes floats in its shortest form: the bar
    would read ``env_steps=1e+3``, ``1101.0`` and ``2e+4``. Strings reach the bar as they are.
    Between batches the bar would otherwise stand still: a Hopper retraining late in a run takes
    minutes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase: str | None = None

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        if "env_steps" in metrics:
            metrics["env_steps"] = str(round(metrics["env_steps"]))
        if self.phase is not None:
            metrics["phase"] = self.phase
        return metrics

    def show_phase(self, phase: str | None) -> None:
        """Show ``phase`` in the training bar now (None: take it away)."""
        self.phase = phase
        if self._train_progress_bar is not None and not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(self.trainer, self.trainer.lightning_module))


@contextmanager
def showing_phase(trainer: Trainer, phase: str) -> Iterator[Callable[[str], None]]:
    """Show ``phase`` in the run's ``EnvStepProgressBar`` (if it has one) until the block ends.

    Yields a function that replaces the text, for progress within the phase.
    """
    bar = getattr(trainer, "progress_bar_callback", None)  # None too for a Trainer stand-in
    show = bar.show_phase if isinstance(bar, EnvStepProgressBar) else lambda text: None
    show(phase)
    try:
        yield show
    finally:
        show(None)
