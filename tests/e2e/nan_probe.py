"""Injected into a CLI run (``--trainer.callbacks+=nan_probe.PoisonRewards``): NaN rewards in chosen batches."""

from __future__ import annotations

import math

from lightning.pytorch import Callback


class PoisonRewards(Callback):
    """Sets every reward of agent batches ``first`` to ``first + count - 1`` to NaN (count < 0: forever)."""

    def __init__(self, first: int = 30, count: int = 3) -> None:
        self.first = first
        self.count = count
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches += 1
        last = math.inf if self.count < 0 else self.first + self.count - 1
        if self.first <= self.batches <= last:
            batch["next", "reward"].fill_(math.nan)
