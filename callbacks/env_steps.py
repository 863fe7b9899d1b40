"""Env-step bookkeeping: the step count in the progress bar, throughput and training returns."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from nmbrl.tracking import log_now


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
        if batch_idx % trainer.log_every_n_steps == 0:
            pl_module.log("env_steps", float(data.env_steps), prog_bar=True, logger=False)
        now = time.perf_counter()
        if self._since is None:
            self._since = (now, data.env_steps, trainer.global_step)
        elif now - self._since[0] >= self.window_s:
            elapsed = now - self._since[0]
            rates = {
                "time/env_steps_per_s": (data.env_steps - self._since[1]) / elapsed,
                "time/updates_per_s": (trainer.global_step - self._since[2]) / elapsed,
            }
            self._since = (now, data.env_steps, trainer.global_step)
            log_now(trainer, rates)
        returns = data.pop_episode_returns()
        if returns:
            log_now(trainer, {"train/episode_return": sum(returns) / len(returns)})
