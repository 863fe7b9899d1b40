"""Replay buffers for real and imagined transitions, and the per-sample mix SAC trains on."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, ReplayBuffer

# Where `buffer_state` puts a buffer's filled rows.
FILLED_ROWS = "filled_rows"

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
    return sample_mixed_batches(real, model, 1, batch_size, real_ratio)[0]


def sample_mixed_batches(
    real: ReplayBuffer, model: ReplayBuffer | None, count: int, batch_size: int, real_ratio: float
) -> TensorDictBase:
    """``count x batch_size`` transitions, each from the real buffer with probability ``real_ratio``.

    One sampling call per buffer for all ``count`` batches; each batch is still mixed sample by
    sample (its real rows are Binomial(batch_size, real_ratio)). With no imagined data yet, every
    row is real.
    """
    total = count * batch_size
    if model is None or len(model) == 0 or real_ratio >= 1.0:
        return real.sample(total).reshape(count, batch_size)
    is_real = torch.rand(total) < real_ratio
    n_real = int(is_real.sum())
    drawn = torch.cat([buffer.sample(n) for buffer, n in ((real, n_real), (model, total - n_real)) if n > 0])
    # Row i of the result is the next real draw where is_real[i], else the next imagined one.
    source = torch.empty(total, dtype=torch.long)
    source[is_real] = torch.arange(n_real)
    source[~is_real] = torch.arange(n_real, total)
    return drawn[source].reshape(count, batch_size)


def resized(buffer: ReplayBuffer | None, capacity: int, scratch_dir: str | None = None) -> ReplayBuffer:
    """A buffer of ``capacity`` holding the newest ``capacity`` transitions of ``buffer``, oldest first.

    Written oldest first, so the new buffer also overwrites its oldest rows first once it is full.
    """
    new = make_replay_buffer(capacity, scratch_dir)
    if buffer is not None and len(buffer) > 0:
        new.extend(in_write_order(buffer[:], buffer.writer.state_dict())[-capacity:])
    return new


def in_write_order(rows: TensorDictBase, writer: dict[str, Any]) -> TensorDictBase:
    """A ring buffer's filled rows (storage order) oldest first, given its writer's state.

    Once the writer has written more rows than there are, it has wrapped, and the oldest row is at its cursor.
    """
    cursor = writer["_cursor"]
    return torch.cat([rows[cursor:], rows[:cursor]]) if writer["_write_count"] > len(rows) else rows


def buffer_state(buffer: ReplayBuffer) -> dict[str, Any]:
    """``buffer.state_dict()`` with the storage saved as its filled rows, in plain tensors.

    TorchRL's storages save their whole preallocated capacity, so a checkpoint early in a run is
    mostly zeros: 868 MB at 400 env steps for Humanoid's real buffer. Until the first wrap the data
    are rows ``[0, len)``, so those rows are all there is to keep; after it, every row is.
    """
    state = buffer.state_dict()
    filled = len(buffer)
    if filled > 0:
        rows = buffer[:]
        # A partial view would save the whole storage under it: copy it. A full one is saved as it
        # is, without a copy of what may be many GB, as plain tensors: Lightning resumes with
        # torch.load(weights_only=True), which refuses the memory-mapped tensor subclass.
        rows = rows.clone() if filled < buffer.storage.max_size else rows.apply(lambda t: t.as_subclass(torch.Tensor))
        state["_storage"] = {FILLED_ROWS: rows.to_dict(), "_len": filled}
    return state


def load_buffer_state(buffer: ReplayBuffer, state: dict[str, Any]) -> None:
    """Restore a state from ``buffer_state`` (or a plain ``state_dict``) into an empty buffer.

    Into one of another capacity (a run resumed with another ``--data.buffer_size``), the rows go
    in the order they were written, the newest ``capacity`` of them: a plain load would put them
    where they sat in the old ring, and keep old rows over new ones when it shrinks.
    """
    storage = state["_storage"]
    if FILLED_ROWS in storage and not fits_as_saved(state, buffer.storage.max_size):
        rows = TensorDict(storage[FILLED_ROWS], batch_size=[storage["_len"]])
        written = in_write_order(rows, state["_writer"])
        buffer.empty()
        buffer.extend(written[-buffer.storage.max_size :])
        return
    if FILLED_ROWS in storage:
        buffer.empty()
        # Writing the rows allocates the full capacity, in the storage's own files for a memory-mapped
        # one (TorchRL's load into an unallocated storage maps anonymous memory, that is RAM). The
        # rest of the state then loads as usual, the writer's position included (at the price of
        # copying the storage onto itself once: ReplayBuffer.load_state_dict takes no partial state).
        buffer.extend(TensorDict(storage[FILLED_ROWS], batch_size=[storage["_len"]]))
        state = {**state, "_storage": buffer.storage.state_dict()}
    buffer.load_state_dict(state)


def wrapped(state: dict[str, Any]) -> bool:
    """Whether a saved buffer had written over its first rows (then every row is filled)."""
    return state["_writer"]["_write_count"] > state["_storage"]["_len"]


def fits_as_saved(state: dict[str, Any], capacity: int) -> bool:
    """Whether a ``buffer_state`` loads row for row into a buffer of ``capacity``, its write position included."""
    filled = state["_storage"]["_len"]
    return filled == capacity if wrapped(state) else filled <= capacity
