"""What the role processes share: the real replay buffer and published weights, both in shared memory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

import torch
from tensordict import TensorDict, TensorDictBase
from torch import multiprocessing as mp
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer

from nmbrl.data.buffers import select_transitions
from nmbrl.data.module import RLDataModule

# Role processes are started with "spawn": forking a process whose torch threads are running can deadlock.
CONTEXT = mp.get_context("spawn")


class SharedReplayBuffer(ReplayBuffer):
    """A TorchRL replay buffer that several processes write and read at once.

    TorchRL's ``shared=True`` keeps the length and cursor in shared memory and makes each write
    and each ``sample`` atomic across processes, but not indexing: ``buffer[:]``, which the
    world-model role reads whole, could catch a row half written. One more lock covers it.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(storage=LazyTensorStorage(capacity), batch_size=None, shared=True)
        self.index_lock = CONTEXT.Lock()

    def extend(self, data, *args, **kwargs):
        with self.index_lock:
            return super().extend(data, *args, **kwargs)

    def add(self, data):
        with self.index_lock:
            return super().add(data)

    def __getitem__(self, index):
        with self.index_lock:
            return super().__getitem__(index)


def make_shared_replay_buffer(capacity: int, example: TensorDictBase, contents: ReplayBuffer | None = None) -> SharedReplayBuffer:
    """A shared buffer of ``capacity`` transitions shaped like ``example``, holding ``contents`` if given.

    The storage is allocated here, before any role process starts: TorchRL refuses to share a
    storage that has not been allocated, and one allocated later in a child would be its own.
    """
    buffer = SharedReplayBuffer(capacity)
    buffer.extend(example.unsqueeze(0))  # allocates the storage, laid out like `example`
    buffer.empty()
    if contents is not None and len(contents) > 0:
        buffer.extend(contents[:][-capacity:])
    return buffer


class SharedWeights:
    """A TensorDict of weights that one process publishes and others read, never half written.

    Two slots in shared memory and a version counter. The single writer fills the slot readers
    are not reading, then bumps the version under the lock; a reader copies the published slot
    while holding the lock, so the writer cannot publish over it mid-copy. The slots carry
    ``published_at`` (``time.time()``) and whatever stamps the writer adds to ``template``
    (such as the env steps or agent updates it was made at).

    Args:
        template: Weights of the right keys, shapes and dtypes; copied, never kept.
    """

    def __init__(self, template: TensorDictBase) -> None:
        # In host memory whatever the template's device: role processes run on the CPU.
        template = template.detach().to("cpu").clone().update({"published_at": torch.zeros((), dtype=torch.float64)})
        self.slots = [template.clone().share_memory_() for _ in range(2)]
        self.version = CONTEXT.Value("q", 0)

    def publish(self, weights: TensorDictBase) -> int:
        """Copy ``weights`` (keys of the template) into the free slot and make it current; returns its version."""
        next_version = self.version.value + 1  # only this process changes the version
        slot = self.slots[next_version % 2]
        with torch.no_grad():
            slot.update_(weights.detach())
            slot["published_at"].fill_(time.time())
        with self.version.get_lock():
            self.version.value = next_version
        return next_version

    def read_into(self, target: TensorDictBase, newer_than: int = -1) -> int | None:
        """Copy the current weights into ``target`` in place if their version is above ``newer_than``.

        ``target`` holds a subset of the published keys (e.g. ``TensorDict.from_module(module)``).
        Returns the version copied, or None when there was nothing newer.
        """
        with self.version.get_lock():
            version = self.version.value
            if version <= newer_than:
                return None
            slot = self.slots[version % 2]
            with torch.no_grad():
                target.update_(slot.select(*target.keys(True, True)))
        return version

    def read(self) -> tuple[int, TensorDictBase]:
        """The current version and a private copy of its weights and stamps."""
        with self.version.get_lock():
            version = self.version.value
            return version, self.slots[version % 2].clone()


def module_weights(module: nn.Module) -> TensorDictBase:
    """The parameters and buffers of ``module`` as a TensorDict that shares their storage."""
    return TensorDict.from_module(module).data


@dataclass
class SharedRealData:
    """The real data of a concurrent run, visible to every process.

    Args:
        buffer: The real transitions.
        env_steps: Env steps taken so far; the collector role is its only writer.
    """

    buffer: SharedReplayBuffer
    env_steps: Synchronized


def share_real_data(data: RLDataModule) -> SharedRealData:
    """The data module's real buffer, copied into shared memory, and its env-step count, shared too.

    The data module keeps its transitions in the shared buffer from then on; pass the buffer to
    ``RLDataModule.collect_elsewhere`` together with the stream of batches.
    """
    example = select_transitions(data.env.fake_tensordict())
    buffer = make_shared_replay_buffer(data.buffer_size, example, contents=data.real_buffer)
    return SharedRealData(buffer, CONTEXT.Value("q", data.env_steps))
