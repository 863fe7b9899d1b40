"""Deferred Ctrl+C: the first SIGINT waits for a safe point, the second interrupts at once."""

from __future__ import annotations

import os
import signal

import pytest

from nmbrl.interrupt import GracefulInterrupt


def test_first_sigint_is_deferred_to_the_safe_point_second_is_immediate() -> None:
    interrupt = GracefulInterrupt()
    previous = signal.getsignal(signal.SIGINT)
    interrupt.install()
    try:
        interrupt.raise_if_requested()  # nothing pending: no-op
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested  # handled without raising
        with pytest.raises(KeyboardInterrupt):
            interrupt.raise_if_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        interrupt.uninstall()
    assert signal.getsignal(signal.SIGINT) is previous
