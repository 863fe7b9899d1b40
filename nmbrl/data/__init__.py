"""Real and imagined data: collection, replay buffers and mixed batches."""

from nmbrl.data.buffers import (
    TRANSITION_KEYS,
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
    "make_replay_buffer",
    "model_buffer_capacity",
    "sample_mixed_batch",
    "select_transitions",
]
