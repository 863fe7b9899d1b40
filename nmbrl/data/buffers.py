"""Replay buffers for real and imagined transitions, and the per-sample mix SAC trains on."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, ReplayBuffer

# The keys of one transition, the same for real and imagined data.
TRANSITION_KEYS = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
)


def select_transitions(data: TensorDictBase) -> TensorDictBase:
    """Drop everything but the transition keys (policy outputs, counters, episode sums)."""
    return data.select(*TRANSITION_KEYS)


def make_replay_buffer(capacity: int, scratch_dir: str | None = None) -> ReplayBuffer:
    """A uniform replay buffer allocated at the first write: in memory, or memory-mapped in ``scratch_dir``."""
    storage = LazyTensorStorage(capacity) if scratch_dir is None else LazyMemmapStorage(capacity, scratch_dir=scratch_dir)
    return ReplayBuffer(storage=storage, batch_size=None)


def model_buffer_capacity(horizon: int, rollout_batch_size: int, epoch_length: int, rollout_every: int, retain_epochs: int) -> int:
    """MBPO's model buffer size: the imagined transitions of ``retain_epochs`` epochs."""
    rollouts_per_epoch = max(1, epoch_length // rollout_every)
    return horizon * rollout_batch_size * rollouts_per_epoch * retain_epochs


def sample_mixed_batch(
    real: ReplayBuffer, model: ReplayBuffer | None, batch_size: int, real_ratio: float
) -> TensorDictBase:
    """Draw ``batch_size`` transitions, each from the real buffer with probability ``real_ratio``.

    The mix is per sample: the number of real rows is Binomial(batch_size, real_ratio). With no
    imagined data yet, the whole batch is real.
    """
    if model is None or len(model) == 0 or real_ratio >= 1.0:
        return real.sample(batch_size)
    n_real = int((torch.rand(batch_size) < real_ratio).sum())
    parts = [buffer.sample(n) for buffer, n in ((real, n_real), (model, batch_size - n_real)) if n > 0]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def resized(buffer: ReplayBuffer | None, capacity: int, scratch_dir: str | None = None) -> ReplayBuffer:
    """A buffer of ``capacity`` holding (up to capacity) the transitions of ``buffer``."""
    new = make_replay_buffer(capacity, scratch_dir)
    if buffer is not None and len(buffer) > 0:
        kept = buffer[:]
        new.extend(kept[-capacity:] if len(kept) > capacity else kept)
    return new
