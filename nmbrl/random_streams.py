"""Each part of a run draws its random numbers from its own stream, derived from the run's seed.

MBPO has three sources of randomness besides the environment: the collector's (exploration noise
and the initial uniform-random actions), the world model's retraining (bootstraps, holdout split,
batch order) and the agent's (batches, rollouts, SAC's action samples). Concurrent mode runs the
first two in their own processes, each seeded with ``role_seed(run seed, role)``. Sync mode draws
the same two from the same streams (``RandomStream``), the agent's from the main generators.

So for a seed, sync mode and concurrent mode's lockstep are the same computation, number for
number on CPU, and the modes can be compared on common random numbers. It also keeps the agent's
random numbers apart from, say, how many batches the world model's early stopping takes.

A resumed sync run goes on drawing where its checkpoint's streams stopped; a resumed role process
draws from a new stream (``segment_stream``).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

#: The streams' names: those of the concurrent roles that draw from them in their own processes.
COLLECTOR = "collector"
WORLD_MODEL = "world_model"


def role_seed(run_seed: int, name: str) -> int:
    """The seed of stream (and role process) ``name``: a function of the run's seed, different for each name and from the run's own.

    A spawned process starts with an unseeded generator, so without it a role's random numbers
    would differ on every run of the same seed.
    """
    return int(np.random.SeedSequence([run_seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def segment_stream(name: str, resumed_at: int) -> str:
    """The stream a role process of a run resumed at ``resumed_at`` env steps draws from: ``name`` itself from the start.

    A role process cannot hand back where its stream stands at each checkpoint, so a resumed role
    would start its stream again and draw, say, the collector's first exploration noise a second
    time. Each resumed stretch draws from a stream of its own instead, the same one whenever the run
    resumes from the same checkpoint. (Sync mode saves its streams in the checkpoint and goes on.)
    """
    return name if resumed_at == 0 else f"{name}, resumed at {resumed_at}"


class RandomStream:
    """The CPU generators (torch, NumPy, ``random``) as ``seed_everything(seed)`` would start them, kept aside.

    ``with stream.active():`` runs a block on this stream and then puts the main generators back
    where they were, so the block's draws neither use nor move the main streams. The CUDA
    generators are left alone: on a GPU the streams cover only what is drawn on the CPU.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.states = (torch.Generator().manual_seed(seed).get_state(), np.random.RandomState(seed).get_state(), random.Random(seed).getstate())

    @classmethod
    def of_run(cls, name: str) -> RandomStream:
        """Stream ``name`` of the running process's run: its seed is the main torch generator's initial seed."""
        return cls(role_seed(torch.initial_seed(), name))

    @contextmanager
    def active(self) -> Iterator[None]:
        main = main_generator_states()
        set_main_generator_states(self.states)
        try:
            yield
        finally:
            self.states = main_generator_states()
            set_main_generator_states(main)

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is, for a checkpoint, so that a resumed run goes on drawing where it stopped."""
        return {"seed": self.seed, **checkpoint_states(self.states)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RandomStream:
        stream = cls(state["seed"])
        stream.states = states_from_checkpoint(state)
        return stream


def main_generator_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def set_main_generator_states(states: tuple) -> None:
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


def checkpoint_states(states: tuple) -> dict[str, Any]:
    """Generator states as tensors and tuples, loadable with ``torch.load(weights_only=True)``."""
    torch_state, (kind, keys, position, has_gauss, cached), python_state = states
    return {
        "torch": torch_state,
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "python": python_state,
    }


def states_from_checkpoint(states: dict[str, Any]) -> tuple:
    kind, keys, position, has_gauss, cached = states["numpy"]
    version, internal, gauss = states["python"]
    return states["torch"], (kind, keys.numpy().astype(np.uint32), position, has_gauss, cached), (version, tuple(internal), gauss)
