"""Exception types: bad user input, and training that cannot go on."""


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


class TrainingDiverged(RuntimeError):
    """Training cannot go on: losses stayed NaN, infinite or exploding (see ``nmbrl.agent.divergence``)."""


class RoleFailed(RuntimeError):
    """A concurrent-mode role process ended with an error, or ended when it should still be running.

    The message holds the role's own traceback. Raised in the main process at a safe point
    (between agent updates), so its state is whole and worth a final checkpoint.
    """
