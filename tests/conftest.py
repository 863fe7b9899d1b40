"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Run the in-process tests on one torch thread.

    Their networks are tiny: a second intra-op thread gains nothing, and on a loaded machine its
    spin-waiting made a small model fit 50 times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def ieee_denormals():
    """Undo the CLI's ``--flush_denormal`` after each in-process test, so the next one computes as usual."""
    yield
    from nmbrl import denormals  # not at import: Lightning imported this early keeps its logs from caplog

    torch.set_flush_denormal(False)
    denormals._flushing = False


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A folder for one CLI run's run folders and MLflow database."""
    return tmp_path
