"""Role processes: start one, notice when it fails, stop it, and never leave it running."""

from __future__ import annotations

import os
import queue
import signal
import time
import traceback
from multiprocessing import parent_process
from typing import Any, Protocol

import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.utilities import rank_zero_warn

from nmbrl.concurrent.shared import CONTEXT
from nmbrl.denormals import denormals_flushed, flush_denormals
from nmbrl.errors import RoleFailed
from nmbrl.random_streams import role_seed, segment_stream


class Role(Protocol):
    """What runs in a role process: ``run`` loops until ``should_stop()`` and may return a final result.

    ``threads`` are its torch threads, ``nice`` its scheduling priority (0 normal, up to 19 lowest).
    """

    name: str
    threads: int
    nice: int

    def run(self, should_stop: StopSignal) -> Any: ...


class StopSignal:
    """True once the parent asks the role to stop, or once the parent has died (so no orphan survives it)."""

    def __init__(self, event) -> None:
        self.event = event

    def __call__(self) -> bool:
        return self.event.is_set() or not parent_process().is_alive()


def role_main(role: Role, seed: int, stop_event, errors, results, flush_denormal: bool = False) -> None:
    """Entry point of a role process: seed it, run the role, send back its result or its traceback.

    ``flush_denormal``: flush denormal floats to zero, as the parent process does (``nmbrl.denormals``).
    """
    if flush_denormal:
        flush_denormals()  # first: before torch starts its CPU threads
    # Ctrl+C reaches the whole process group, and so does a SIGTERM sent to the group (a scheduler's
    # stop); the parent alone decides how the roles stop (``stop``, or the role sees the parent gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed_everything(seed, verbose=False)
    torch.set_num_threads(role.threads)
    os.nice(role.nice)
    try:
        results.put(role.run(StopSignal(stop_event)))
    except BaseException:
        errors.put(traceback.format_exc())
        raise SystemExit(1) from None


class RoleProcess:
    """One role running in its own spawned process.

    Args:
        role: What the process runs; pickled into it, so everything it holds must be shareable.
        stop_timeout_s: Seconds a stopping role gets to finish before it is killed.
        resumed_at: Env steps of the checkpoint the run resumed from (0 for a new run); it picks the
            role's random stream (``nmbrl.random_streams.segment_stream``).
    """

    def __init__(self, role: Role, stop_timeout_s: float = 10.0, resumed_at: int = 0) -> None:
        self.role = role
        self.stop_timeout_s = stop_timeout_s
        # The run's seed (``seed_everything`` in the parent) is the parent generator's initial seed.
        self.seed = role_seed(torch.initial_seed(), segment_stream(role.name, resumed_at))
        self.stop_event = CONTEXT.Event()
        self.errors = CONTEXT.Queue()
        self.results = CONTEXT.Queue()
        self.process = CONTEXT.Process(
            target=role_main,
            args=(role, self.seed, self.stop_event, self.errors, self.results, denormals_flushed()),
            name=f"nmbrl-{role.name}",
            daemon=True,  # a safety net: multiprocessing terminates daemons when the parent exits
        )
        self.failure: str | None = None

    @property
    def name(self) -> str:
        return self.role.name

    def start(self) -> None:
        self.process.start()

    def check(self) -> None:
        """Raise RoleFailed, with the role's own traceback, if the process has ended before being asked to."""
        if self.process.is_alive() or self.stop_event.is_set():
            return
        self.failure = self.failure or self.read_failure()
        raise RoleFailed(f"the {self.name} role failed, so the run stops:\n{self.failure}")

    def read_failure(self) -> str:
        try:
            return self.errors.get(timeout=2.0)
        except queue.Empty:
            return f"its process ended with exit code {self.process.exitcode} and left no traceback."

    def stop(self) -> Any:
        """Ask the role to stop and wait for it; kill it past the timeout. Returns its final result.

        Raises RoleFailed if the role ended with an error. Safe to call more than once.
        """
        if self.process.pid is None or self.stop_event.is_set():
            return None
        self.stop_event.set()
        deadline = time.monotonic() + self.stop_timeout_s
        result = None
        if self.process.is_alive():
            # Take the result before joining: a process with queued data waits for it to be read.
            try:
                result = self.results.get(timeout=self.stop_timeout_s)
            except queue.Empty:
                rank_zero_warn(f"The {self.name} role did not stop within {self.stop_timeout_s} s; killing it.")
            else:  # it has returned and is exiting, which takes a few seconds on a loaded machine
                self.process.join(timeout=max(deadline - time.monotonic(), 5.0))
        self.process.join(timeout=1.0)
        if self.process.is_alive():  # a role ignores SIGTERM (role_main): one that is stuck gets SIGKILL
            self.process.kill()
            self.process.join()
        if self.process.exitcode == 1:  # role_main's exit after an error
            self.failure = self.failure or self.read_failure()
            raise RoleFailed(f"the {self.name} role failed:\n{self.failure}")
        return result
