"""Divergence guard: never take an optimizer step on a NaN, infinite or exploding loss.

Other MBPO implementations have watched critic losses jump from 2 to 2.6e7 and kept training.
Here each update's losses are checked before the step. A bad update is skipped and the learner
goes back to its last good weights and optimizer state (snapshotted every ``snapshot_every``
good updates). After ``patience`` bad updates in a row, training stops with ``TrainingDiverged``;
the weights it leaves behind, and so the final checkpoint, are the last good ones.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from nmbrl.errors import TrainingDiverged


class DivergenceGuard:
    """Checks losses, snapshots good states and restores them.

    Args:
        module: The learner whose parameters and buffers are snapshotted (e.g. the SAC loss module).
        optimizer: Its optimizer, snapshotted with it.
        explosion_keys: Losses tested for explosion (all losses are tested for NaN and inf). Losses
            that cross zero, like SAC's temperature loss, have no meaningful scale to explode from.
        max_loss_ratio: A watched loss above this multiple of its running average counts as exploding.
        patience: Bad updates in a row after which training stops.
        snapshot_every: Good updates between snapshots.
        warmup: Good updates before the running averages are trusted for the explosion test.
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        explosion_keys: tuple[str, ...] = (),
        max_loss_ratio: float = 1e4,
        patience: int = 10,
        snapshot_every: int = 1000,
        warmup: int = 100,
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self.explosion_keys = explosion_keys
        self.max_loss_ratio = max_loss_ratio
        self.patience = patience
        self.snapshot_every = snapshot_every
        self.warmup = warmup
        self.averages: dict[str, float] = {}
        self.good_updates = 0
        self.bad_in_a_row = 0
        self.bad_updates = 0
        self.snapshot = self.take_snapshot()

    def problem(self, losses: dict[str, float]) -> str | None:
        """Why these loss values must not be stepped on, or None if they are fine."""
        for name, value in losses.items():
            if not math.isfinite(value):
                return f"{name} is {value}"
        if self.good_updates >= self.warmup:
            for name in self.explosion_keys:
                value, average = losses[name], self.averages[name]
                if abs(value) > self.max_loss_ratio * max(abs(average), 1e-6):
                    return f"{name} exploded to {value:.3g} (running average {average:.3g})"
        return None

    def accept(self, losses: dict[str, float]) -> None:
        """Record a good update: update the running averages, snapshot now and then."""
        for name in self.explosion_keys:
            value = losses[name]
            self.averages[name] = value if name not in self.averages else 0.99 * self.averages[name] + 0.01 * value
        self.good_updates += 1
        self.bad_in_a_row = 0
        if self.good_updates % self.snapshot_every == 0:
            self.snapshot = self.take_snapshot()

    def reject(self, reason: str) -> None:
        """Go back to the last good state; raise TrainingDiverged after ``patience`` bad updates in a row."""
        self.bad_updates += 1
        self.bad_in_a_row += 1
        self.restore_snapshot()
        if self.bad_in_a_row >= self.patience:
            raise TrainingDiverged(
                f"training diverged: {self.bad_in_a_row} updates in a row were rejected (last: {reason}), even after "
                f"restoring the weights of good update {self.snapshot['good_updates']}. Those weights are kept and "
                "checkpointed. Try a lower learning rate (a run resumed with --ckpt_path takes its config's, such as "
                "--model.optimizer.init_args.lr 1e-4), or check the environment's observations and rewards for NaN."
            )

    @staticmethod
    def values(losses: dict[str, Tensor]) -> dict[str, float]:
        """The losses as floats, read in one device sync."""
        names = list(losses)
        return dict(zip(names, torch.stack([losses[n].detach().float() for n in names]).tolist()))

    def take_snapshot(self) -> dict:
        return {
            "module": copy.deepcopy(self.module.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "good_updates": self.good_updates,
        }

    def restore_snapshot(self) -> None:
        self.module.load_state_dict(self.snapshot["module"])
        self.optimizer.load_state_dict(self.snapshot["optimizer"])
