"""How the agent shares the machine's cores with the role processes.

With a core to spare for each role, nothing needs sharing. Without (2 cores: the agent's 2 torch
threads beside a collector and a world-model trainer), a role that takes a core from one of the
agent's threads stalls every parallel op of the agent, and the agent ran no faster with 2 threads
than with 1 (benchmarks/RESULTS.md). So the two roles share differently:

- the collector waits on pacing most of the time and needs little CPU, but needs it at once: it
  runs at a low priority (``CollectorProcess(nice=...)``), in the moments the agent leaves a core idle,
  which include every wait for an env step;
- the world-model trainer needs a core for seconds at a time: while it retrains, the agent drops
  to the threads the remaining cores hold (``ThreadLending``), and takes them back after.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_beside(agent_threads: int, role_threads: int, cores: int) -> int:
    """The agent's threads while a role of ``role_threads`` threads runs on ``cores`` cores: what is left, at least 1."""
    return max(1, min(agent_threads, cores - role_threads))


@dataclass
class ThreadLending:
    """The agent's torch threads, lowered while the world-model role retrains.

    Args:
        retraining: Nonzero while the world-model role retrains; the role sets it.
        threads: The agent's own threads.
        while_retraining: Its threads while the role retrains (``threads_beside``).
    """

    retraining: Synchronized
    threads: int
    while_retraining: int

    def apply(self) -> int:
        """Set the agent's threads for what the world-model role is doing now; returns them. About 1 us."""
        threads = self.while_retraining if self.retraining.value else self.threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    def restore(self) -> None:
        torch.set_num_threads(self.threads)
