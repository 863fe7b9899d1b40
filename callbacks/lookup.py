"""Finding a run's callback by its type: callbacks that work together (retraining and rollouts, the concurrent roles)."""

from __future__ import annotations

from typing import TypeVar

from lightning.pytorch import Callback, Trainer

from nmbrl.errors import ConfigError

C = TypeVar("C", bound=Callback)


def callback_of(trainer: Trainer, kind: type[C], missing: str) -> C:
    """The run's first callback of type ``kind``; ConfigError(``missing``) if it has none."""
    for callback in trainer.callbacks:
        if isinstance(callback, kind):
            return callback
    raise ConfigError(missing)
