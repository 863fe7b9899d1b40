"""Helpers for run-lifecycle tests: a CLI run in the background, stopped by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from cli_runner import ROOT, store_args


def start_cli(*args: str, store: Path, log: Path, own_group: bool = False) -> subprocess.Popen:
    """``python cli.py <args>`` in the background, stdout and stderr to ``log``.

    With ``own_group`` it leads a process group of its own, as a command started from a terminal
    does, so that ``os.killpg`` reaches it and every process it starts, as Ctrl+C would.
    """
    command = [sys.executable, "cli.py", *args, *store_args(store)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=own_group)


def group_alive(group: int) -> bool:
    """Whether any process of the group is still running (zombies excluded)."""
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def wait_for(condition, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) first:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def send_and_wait(process: subprocess.Popen, sig: signal.Signals, timeout: float = 120) -> tuple[int, float]:
    """Send ``sig``; the exit status and the seconds the process took to exit."""
    sent = time.monotonic()
    process.send_signal(sig)
    status = process.wait(timeout=timeout)
    return status, time.monotonic() - sent


def checkpoints(store: Path) -> list[Path]:
    return sorted(store.glob("runs/*/*/checkpoints/last.ckpt"))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def buffer_length(checkpoint: dict, name: str) -> int:
    return checkpoint["RLDataModule"][name]["_storage"]["_len"]
