"""Exception types: bad user input, and training that cannot go on."""

from collections.abc import Callable, Iterable

import torch


class ConfigError(ValueError):
    """A setting is invalid. The message names the value, what was expected and the fix.

    Raised while the config is instantiated, before any environment is built, and turned into a
    one-line message and a non-zero exit by ``cli.py``.
    """


def check_at_least_one(**settings: int) -> None:
    """ConfigError naming the first setting below 1 (counts, sizes, intervals)."""
    for name, value in settings.items():
        if value < 1:
            raise ConfigError(f"{name}={value} must be at least 1.")


def check_optimizer(factory: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None) -> None:
    """ConfigError if the optimizer ``factory`` (a config's ``optimizer``) rejects its settings.

    The factory is tried on one placeholder parameter, so a bad learning rate or beta stops the
    run when the config is read, not after the environment and the networks are built.
    """
    if factory is None:
        return
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError, RuntimeError) as error:
        raise ConfigError(f"optimizer: {error}") from error


class TrainingDiverged(RuntimeError):
    """Training cannot go on: losses stayed NaN, infinite or exploding (see ``nmbrl.agent.divergence``)."""


class RoleFailed(RuntimeError):
    """A concurrent-mode role process ended with an error, or ended when it should still be running.

    The message holds the role's own traceback. Raised in the main process at a safe point
    (between agent updates), so its state is whole and worth a final checkpoint.
    """
