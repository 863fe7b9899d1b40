"""When periodic work is due: MBPO retrains its world model and rolls out every ``every`` env steps."""

from __future__ import annotations


def next_due(env_steps: int, every: int) -> int:
    """The env step after ``env_steps`` at which work done every ``every`` env steps is next due: the next multiple.

    Retraining, rollouts and the concurrent world-model role all use it, so that they agree on the steps.
    """
    return (env_steps // every + 1) * every
