"""Denormal floats flushed to zero in CPU maths: Adam's moment estimates of dead units decay into them.

A unit whose gradient is always zero (a dead ReLU) keeps multiplying its Adam moment estimates by
0.9 and 0.999 a step, down into the denormal range (below 1.2e-38 in float32). There every CPU
float operation on them takes a microcode assist of about a hundred cycles. After the 20k env
steps of ``configs/mbpo.yaml``, 26% of the agent's ``exp_avg`` and 20% of its ``exp_avg_sq`` were
denormal, and fused Adam's step on that state took 612 us, against 91 us with denormals flushed
(2-core CPU, ``benchmarks/RESULTS.md``). Flushing (the CPU's FTZ and DAZ modes) changes only values
below 1.2e-38 (2.2e-308 in float64), which become 0.

The mode belongs to each thread, and torch's CPU worker threads take it from the thread that
starts them, when they start: flush before torch's first parallel CPU operation in the process.
"""

from __future__ import annotations

import torch

# Elements in the probe: enough for torch to share it out among all its CPU threads (its grain size is 32768).
PROBE_SIZE = 1 << 20
# The bits of a float32 denormal (about 2.9e-39): a flushing thread would already turn the float into 0 on writing it.
DENORMAL_BITS = 0x00200000

_flushing = False


def flush_denormals() -> bool:
    """Flush denormals to zero in this thread and in torch's CPU threads; whether every thread now does.

    False where the CPU cannot (no SSE3), or where torch's worker threads started before this call
    and so keep computing with denormals.
    """
    global _flushing
    _flushing = torch.set_flush_denormal(True) and all_threads_flush()
    return _flushing


def denormals_flushed() -> bool:
    """Whether ``flush_denormals`` succeeded in this process: role processes it starts then flush too."""
    return _flushing


def all_threads_flush() -> bool:
    """Whether every torch CPU thread flushes: a denormal times 1 is 0 in each thread's share of a large tensor.

    The result is read as integers: a thread that flushes also reads a denormal as 0 when it compares floats.
    """
    return bool((denormal_floats(PROBE_SIZE) * 1.0).view(torch.int32).eq(0).all())


def denormal_floats(count: int) -> torch.Tensor:
    """``count`` float32 denormals, written as bits."""
    return torch.full((count,), DENORMAL_BITS, dtype=torch.int32).view(torch.float32)
