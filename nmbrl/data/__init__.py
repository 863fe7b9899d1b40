"""Real and imagined data: collection, replay buffers and mixed batches."""

from nmbrl.data.buffers import (
    TRANSITION_KEYS,
    buffer_state,
    load_buffer_state,
    make_replay_buffer,
    model_buffer_capacity,
    sample_mixed_batch,
    select_transitions,
)
from nmbrl.data.module import RLDataModule, TrainingStream

__all__ = [
    "TRANSITION_KEYS",
    "RLDataModule",
    "TrainingStream",
    "buffer_state",
    "load_buffer_state",
    "make_replay_buffer",
    "model_buffer_capacity",
    "sample_mixed_batch",
    "select_transitions",
]
