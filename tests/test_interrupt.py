"""Deferred Ctrl+C and SIGTERM: the first signal waits for a safe point, a second interrupts at once."""

from __future__ import annotations

import os
import signal

import pytest

from nmbrl.interrupt import GracefulInterrupt


@pytest.mark.parametrize("signum, reason", [(signal.SIGINT, "Ctrl+C"), (signal.SIGTERM, "SIGTERM")])
def test_first_signal_is_deferred_to_the_safe_point_second_is_immediate(signum, reason, capsys) -> None:
    interrupt = GracefulInterrupt()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupt.install()
    try:
        interrupt.raise_if_requested()  # nothing pending: no-op
        os.kill(os.getpid(), signum)
        assert interrupt.requested and interrupt.reason == reason  # handled without raising
        assert capsys.readouterr().out.strip().startswith(f"{reason}: stopping at the next safe point")
        with pytest.raises(KeyboardInterrupt):
            interrupt.raise_if_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
    finally:
        interrupt.uninstall()
    assert {s: signal.getsignal(s) for s in previous} == previous


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_without_deferral_the_first_signal_interrupts_at_once_and_is_remembered(signum) -> None:
    interrupt = GracefulInterrupt()
    interrupt.install(deferred=False)
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
        assert interrupt.requested_by == signum  # the CLI's exit status comes from it
        interrupt.install()  # the next install defers again
        os.kill(os.getpid(), signum)
        assert interrupt.requested_by == signum
    finally:
        interrupt.uninstall()


def test_take_over_reclaims_sigterm_from_a_later_handler_and_keeps_a_pending_stop() -> None:
    """Lightning sets its own SIGTERM handler after setup; training start gives it back to the deferred one."""
    interrupt = GracefulInterrupt()
    previous = signal.getsignal(signal.SIGTERM)
    interrupt.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        later = []
        signal.signal(signal.SIGTERM, lambda signum, frame: later.append(signum))  # as Lightning's would
        interrupt.take_over()
        assert interrupt.reason == "Ctrl+C"  # still pending
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the deferred handler's second signal, not the later one
        assert later == []
    finally:
        interrupt.uninstall()
    assert signal.getsignal(signal.SIGTERM) is previous  # what it was before install, not the later handler


def test_uninstall_leaves_a_handler_set_after_it_alone() -> None:
    interrupt = GracefulInterrupt()
    previous = signal.getsignal(signal.SIGTERM)
    interrupt.install()
    try:
        def mine(signum, frame):
            pass

        signal.signal(signal.SIGTERM, mine)
        interrupt.uninstall()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_request_from_another_rank_stops_here_too_without_overriding_a_local_one() -> None:
    interrupt = GracefulInterrupt()
    interrupt.request(signal.SIGTERM)
    assert interrupt.reason == "SIGTERM"
    interrupt.request(signal.SIGINT)
    assert interrupt.reason == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        interrupt.raise_if_requested()
