"""Injected into a sync CLI run (``--trainer.callbacks+=role_streams_probe.RoleStreams``): the roles' random streams.

In concurrent mode the collector and the world-model trainer run in their own processes, each
seeded with ``role_seed(run seed, role name)``; in sync mode the same work draws from the main
process's generators. This callback makes a sync run draw its collection and its retrainings from
those role streams instead, and leaves everything else on the main generators, so that a sync run
and a lockstep run of one seed should be the same computation, number for number.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from lightning.pytorch import Callback

import callbacks.model_training
from nmbrl.concurrent.supervisor import role_seed


def generator_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def restore_generators(states: tuple) -> None:
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


class Stream:
    """The generators as a role process starts them (``role_main`` seeds torch, NumPy and ``random``)."""

    def __init__(self, seed: int) -> None:
        outer, run_seed = generator_states(), torch.initial_seed()
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.states = generator_states()
        torch.manual_seed(run_seed)  # keeps torch.initial_seed() the run's; the state comes back next
        restore_generators(outer)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the block on this stream, then put the main generators back where they were."""
        outer = generator_states()
        restore_generators(self.states)
        try:
            yield
        finally:
            self.states = generator_states()
            restore_generators(outer)

    def wrap(self, function: Callable) -> Callable:
        @functools.wraps(function)
        def on_stream(*args, **kwargs):
            with self.active():
                return function(*args, **kwargs)

        return on_stream


class RoleStreams(Callback):
    """Collection on the collector's stream, retraining on the world model's, as the role processes draw them."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        run_seed = torch.initial_seed()  # what RoleProcess derives each role's seed from
        data = trainer.datamodule
        data.collect = Stream(role_seed(run_seed, "collector")).wrap(data.collect)
        callbacks.model_training.train_world_model = Stream(role_seed(run_seed, "world_model")).wrap(
            callbacks.model_training.train_world_model
        )
