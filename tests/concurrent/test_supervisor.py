"""Role processes: results come back, failures surface with their traceback, nothing is left running."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything

from nmbrl.concurrent.shared import CONTEXT
from nmbrl.concurrent.supervisor import RoleProcess, StopSignal
from nmbrl.errors import RoleFailed


@dataclass
class Waiter:
    """Waits to be stopped, then returns how it ended."""

    name: str = "waiter"
    threads: int = 1
    nice: int = 0

    def run(self, should_stop: StopSignal) -> str:
        while not should_stop():
            time.sleep(0.01)
        return "stopped cleanly"


@dataclass
class Drawer:
    """Returns the first random numbers its process draws: torch's, numpy's and Python's."""

    name: str = "drawer"
    threads: int = 1
    nice: int = 0

    def run(self, should_stop: StopSignal) -> list[float]:
        import random

        return [*torch.rand(2).tolist(), *np.random.rand(2).tolist(), random.random()]


@dataclass
class Crasher:
    name: str = "crasher"
    threads: int = 1
    nice: int = 0

    def run(self, should_stop: StopSignal) -> None:
        raise ValueError("injected failure")


@dataclass
class Stubborn:
    """Ignores the stop signal."""

    name: str = "stubborn"
    threads: int = 1
    nice: int = 0

    def run(self, should_stop: StopSignal) -> None:
        while True:
            time.sleep(0.01)


def wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def is_running(pid: int) -> bool:
    """True for a live process; a zombie (ended, not yet reaped) counts as ended."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


def test_a_stopped_role_returns_its_result_and_its_process_ends():
    role = RoleProcess(Waiter(), stop_timeout_s=30)
    role.start()
    role.check()
    assert role.stop() == "stopped cleanly"
    assert not role.process.is_alive() and role.process.exitcode == 0
    assert role.stop() is None  # a second stop is harmless


def draws(seed: int, name: str = "drawer", resumed_at: int = 0) -> list[float]:
    """What a Drawer role draws in a run seeded with ``seed`` (resumed at ``resumed_at`` env steps)."""
    seed_everything(seed, verbose=False)
    role = RoleProcess(Drawer(name=name), resumed_at=resumed_at)
    role.start()
    drawn = role.results.get(timeout=60)
    role.process.join(timeout=60)
    assert role.process.exitcode == 0
    return drawn


def test_a_role_process_draws_from_the_runs_seed():
    # A spawned process starts unseeded: the same seed must still give the same draws in a role,
    # so that a concurrent run can be repeated.
    first = draws(3)
    assert draws(3) == first
    assert draws(4) != first
    assert draws(3, name="other") != first  # each role has its own stream
    seed_everything(3, verbose=False)
    assert torch.rand(2).tolist() != first[:2]  # and not the run's own


def test_a_resumed_role_draws_a_stream_of_its_own():
    # A role process cannot hand its stream's position back at each checkpoint: resumed, it must not
    # draw its first numbers (the collector's first exploration noise) again, and a resume from the
    # same checkpoint must still be repeatable.
    fresh = draws(3)
    resumed = draws(3, resumed_at=5000)
    assert resumed != fresh
    assert draws(3, resumed_at=5000) == resumed
    assert draws(3, resumed_at=6000) not in (fresh, resumed)
    assert draws(3, resumed_at=0) == fresh  # a new run keeps sync mode's streams (lockstep = sync)


def test_a_role_runs_at_its_priority():
    parent = os.getpriority(os.PRIO_PROCESS, 0)
    role = RoleProcess(Waiter(nice=7), stop_timeout_s=30)
    role.start()
    try:
        wait_until(lambda: os.getpriority(os.PRIO_PROCESS, role.process.pid) == min(parent + 7, 19))
    finally:
        assert role.stop() == "stopped cleanly"
    assert os.getpriority(os.PRIO_PROCESS, 0) == parent, "the parent keeps its own priority"


def test_a_failed_role_raises_its_own_traceback_in_the_parent():
    role = RoleProcess(Crasher())
    role.start()
    role.process.join(timeout=60)
    with pytest.raises(RoleFailed, match="(?s)crasher role failed.*ValueError: injected failure"):
        role.check()
    with pytest.raises(RoleFailed, match="ValueError: injected failure"):
        role.stop()


def test_a_role_that_ignores_the_stop_signal_is_killed():
    role = RoleProcess(Stubborn(), stop_timeout_s=0.5)
    role.start()
    wait_until(lambda: role.process.pid is not None and is_running(role.process.pid))
    start = time.monotonic()
    role.stop()
    assert not role.process.is_alive()
    assert time.monotonic() - start < 10


def ignored_signals(pid: int) -> set[int]:
    """The signals process ``pid`` ignores (``SigIgn`` in ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return {signum for signum in range(1, 64) if mask >> (signum - 1) & 1}
    return set()


def test_signals_to_the_process_group_leave_the_stop_to_the_parent():
    """Ctrl+C, or a scheduler's SIGTERM to the group, reaches the roles too: they keep running until stopped."""
    role = RoleProcess(Waiter(), stop_timeout_s=30)
    role.start()
    try:
        deferred = {signal.SIGINT, signal.SIGTERM}
        wait_until(lambda: deferred <= ignored_signals(role.process.pid))  # role_main has set them up
        for signum in deferred:
            os.kill(role.process.pid, signum)
        time.sleep(1.0)
        role.check()  # still running: it would raise RoleFailed had a signal ended it
    finally:
        assert role.stop() == "stopped cleanly"


def start_role_then_die(pids) -> None:
    role = RoleProcess(Waiter())
    role.start()
    pids.put(role.process.pid)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs


def test_a_role_ends_itself_when_its_parent_dies():
    pids = CONTEXT.Queue()
    parent = CONTEXT.Process(target=start_role_then_die, args=(pids,))
    parent.start()
    child = pids.get(timeout=60)
    parent.join(timeout=60)
    assert parent.exitcode == -signal.SIGKILL
    wait_until(lambda: not is_running(child), timeout_s=30)
