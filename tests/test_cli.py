"""The command line's own settings (the classes' settings are tested with the classes)."""

from pathlib import Path

import pytest
import torch

from nmbrl.cli import NMBRLCLI

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def build_cli(tmp_path: Path, *args: str) -> NMBRLCLI:
    """The CLI's objects for the default config, without fitting and without a logger."""
    config = ["--config", str(ROOT / "configs/mbpo.yaml"), "--trainer.logger", "false"]
    return NMBRLCLI(args=[*config, "--trainer.default_root_dir", str(tmp_path), *args], run=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_threads_sets_torch_intra_op_threads(tmp_path, restore_torch_threads, threads):
    torch.set_num_threads(3)

    build_cli(tmp_path, "--torch_threads", str(threads))

    assert torch.get_num_threads() == threads


def test_torch_threads_defaults_to_one(tmp_path, restore_torch_threads):
    torch.set_num_threads(2)

    build_cli(tmp_path)

    assert torch.get_num_threads() == 1
