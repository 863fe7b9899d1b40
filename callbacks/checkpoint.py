"""A checkpoint at the very end of fit, however it ends."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from nmbrl.tracking import run_dir


class FinalCheckpoint(Checkpoint):
    """Saves ``last.ckpt`` when training ends: normally, on an error or on Ctrl+C.

    Lightning runs ``Checkpoint`` callbacks after all others, so by then the concurrent roles
    have stopped and handed back their final state. The file goes where ``ModelCheckpoint``
    keeps its own (so ``--ckpt_path last`` finds it), or to ``<run folder>/checkpoints``.
    """

    def __init__(self) -> None:
        self.training_started = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.training_started = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.training_started:
            self.save(trainer)

    def save(self, trainer: Trainer) -> None:
        folders = [cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        folder = Path(folders[0]) if folders else run_dir(trainer) / "checkpoints"
        trainer.save_checkpoint(folder / "last.ckpt")
