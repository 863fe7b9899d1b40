"""Denormal floats flushed to zero: in every torch CPU thread, by the CLI, and in role processes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nmbrl import denormals
from nmbrl.concurrent.supervisor import RoleProcess, StopSignal
from nmbrl.denormals import all_threads_flush, denormal_floats, denormals_flushed

ROOT = Path(__file__).resolve().parents[1]


def in_fresh_process(code: str) -> str:
    """Run ``code`` in a new Python (its own CPU thread modes); its stdout."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_flushing_reaches_every_cpu_thread_when_it_comes_first():
    out = in_fresh_process(
        "import torch\n"
        "from nmbrl.denormals import flush_denormals, denormals_flushed, denormal_floats\n"
        "print(flush_denormals(), denormals_flushed())\n"
        "torch.set_num_threads(2)\n"
        "x = denormal_floats(1 << 20) * 1.0\n"  # shared out between both threads
        "print(int(x.view(torch.int32).ne(0).sum()))\n"  # as integers: a flushing thread reads a denormal as 0
    )
    assert out.split() == ["True", "True", "0"]


def test_worker_threads_started_before_the_flush_are_detected():
    # They keep computing with denormals, and flush_denormals says so.
    out = in_fresh_process(
        "import torch\n"
        "from nmbrl.denormals import flush_denormals, denormals_flushed\n"
        "torch.set_num_threads(2)\n"
        "torch.ones(1 << 20) * 2.0\n"  # starts torch's worker thread
        "print(flush_denormals(), denormals_flushed())\n"
    )
    assert out.split() == ["False", "False"]


def test_without_flushing_denormals_survive():
    # The probe's premise: IEEE arithmetic keeps a denormal times 1.
    torch.set_flush_denormal(False)
    assert not all_threads_flush()
    x = denormal_floats(4)
    assert 0 < x.abs().max() < torch.finfo(torch.float32).tiny
    assert (x * 1.0).view(torch.int32).ne(0).all()


@pytest.mark.parametrize("flag", [[], ["--flush_denormal", "false"]], ids=["default", "off"])
def test_the_cli_flushes_denormals_unless_told_not_to(tmp_path, flag):
    out = in_fresh_process(
        "from nmbrl.cli import NMBRLCLI\n"
        "from nmbrl.denormals import denormals_flushed, all_threads_flush\n"
        f"NMBRLCLI(args=['--config', 'configs/mbpo.yaml', '--trainer.logger', 'false', '--trainer.default_root_dir', {str(tmp_path)!r}, *{flag!r}], run=False)\n"
        "print(denormals_flushed(), all_threads_flush())\n"
    )
    assert out.split()[-2:] == (["True", "True"] if not flag else ["False", "False"])


@dataclass
class FlushProbe:
    """Reports whether each of its two torch threads flushes denormals."""

    name: str = "flush_probe"
    threads: int = 2
    nice: int = 0

    def run(self, should_stop: StopSignal) -> bool:
        return all_threads_flush()


@pytest.mark.parametrize("parent_flushes", [True, False])
def test_a_role_process_flushes_as_its_parent_does(monkeypatch, parent_flushes):
    monkeypatch.setattr(denormals, "_flushing", parent_flushes)
    assert denormals_flushed() == parent_flushes
    role = RoleProcess(FlushProbe())
    role.start()
    flushes = role.results.get(timeout=60)
    role.process.join(timeout=60)

    assert flushes == parent_flushes
