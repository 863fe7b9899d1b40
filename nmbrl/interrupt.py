"""Ctrl+C and SIGTERM that stop training at a safe point instead of in the middle of an update.

The first SIGINT (Ctrl+C) or SIGTERM (``kill``, ``timeout``, a scheduler's stop) only sets a
flag. Training checks it between agent updates and between world-model epochs, and then raises
``KeyboardInterrupt`` itself, so the state that gets checkpointed is never half-written (a buffer
mid-extend, an optimizer mid-step). A second signal interrupts at once, for when a safe point
takes too long.

Lightning has a SIGTERM handler of its own, which ends ``fit`` without a final checkpoint and, in
DDP, runs a collective inside the handler that deadlocks when the ranks are in different
collectives; ``take_over`` puts this one back in its place once training starts.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_only

DEFERRED = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl+C", signal.SIGTERM: "SIGTERM"}


class GracefulInterrupt:
    """Installs the deferred SIGINT and SIGTERM handler between ``install()`` and ``uninstall()``."""

    def __init__(self) -> None:
        self.requested_by: signal.Signals | None = None  # the first signal since install()
        self.deferred = True  # False: the first signal interrupts at once
        # The signal that ended fit or test: the CLI then exits with status 128 + it (130, 143), as a shell reports it.
        self.stopped_by: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def requested(self) -> bool:
        return self.requested_by is not None

    @property
    def reason(self) -> str:
        """What asked for the stop, in the user's words: "Ctrl+C" or "SIGTERM"."""
        return NAMES[self.requested_by or signal.SIGINT]

    def install(self, deferred: bool = True) -> None:
        """Handle both signals from now on, with no stop pending.

        ``deferred=False`` is for work with no state to keep whole (``cli.py test``): the first
        signal raises ``KeyboardInterrupt`` at once, still remembered as the one that stopped it.
        """
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self.requested_by = None
        self.deferred = deferred
        self.take_over()

    def take_over(self) -> None:
        """Put this handler back on any deferred signal another one has taken; a pending stop stays pending."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in DEFERRED:
            current = signal.getsignal(signum)
            if current != self._handle:
                self._previous.setdefault(signum, current)
                signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Give each signal back its handler from before ``install``, unless someone else has taken it since."""
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        self._previous = {}

    def request(self, signum: int) -> None:
        """Stop at the next safe point, as if ``signum`` had arrived here (DDP ranks agree on a stop this way)."""
        if self.requested_by is None:
            self.requested_by = signal.Signals(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested or not self.deferred:
            self.request(signum)
            raise KeyboardInterrupt
        self.request(signum)
        if getattr(rank_zero_only, "rank", 0) == 0:  # under DDP, Ctrl+C reaches every rank: say it once
            again = "press again to stop at once" if signum == signal.SIGINT else "a second SIGTERM stops at once"
            print(f"\n{self.reason}: stopping at the next safe point and writing a checkpoint ({again}).", flush=True)

    def raise_if_requested(self) -> None:
        """Call at a safe point: turn a pending stop into ``KeyboardInterrupt``."""
        if self.requested:
            raise KeyboardInterrupt


# One per process: the signals go to the process, and every safe point asks the same question.
interrupt = GracefulInterrupt()


def stop_requested() -> bool:
    """True once Ctrl+C or SIGTERM arrived; long loops (world-model training) stop early."""
    return interrupt.requested
