"""Ctrl+C that stops training at a safe point instead of in the middle of an update.

The first SIGINT only sets a flag. Training checks it between agent updates and between
world-model epochs, and then raises ``KeyboardInterrupt`` itself, so the state that gets
checkpointed is never half-written (a buffer mid-extend, an optimizer mid-step). A second
SIGINT interrupts at once, for when a safe point takes too long.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class GracefulInterrupt:
    """Installs the deferred SIGINT handler between ``install()`` and ``uninstall()``."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_run = False  # set when a Ctrl+C ended fit or test: the CLI then exits with status 130
        self._previous = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl+C: stopping at the next safe point and writing a checkpoint (press again to stop at once).", flush=True)

    def raise_if_requested(self) -> None:
        """Call at a safe point: turn a pending Ctrl+C into ``KeyboardInterrupt``."""
        if self.requested:
            raise KeyboardInterrupt


# One per process: SIGINT goes to the process, and every safe point asks the same question.
interrupt = GracefulInterrupt()


def stop_requested() -> bool:
    """True once Ctrl+C was pressed; long loops (world-model training) stop early."""
    return interrupt.requested
