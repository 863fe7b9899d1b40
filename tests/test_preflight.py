"""Checks of the run folder, the MLflow store and the room for the replay buffers, before anything is built."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from nmbrl import preflight
from nmbrl.data.buffers import make_replay_buffer
from nmbrl.errors import ConfigError
from nmbrl.preflight import (
    ROLLOUT_TRANSITIONS_PER_STEP,
    check_buffer_room,
    check_tracking_uri,
    check_writable_folder,
    rollout_bytes,
    transition_bytes,
)


def test_a_folder_that_can_be_created_passes_and_is_not_created(tmp_path: Path) -> None:
    check_writable_folder(tmp_path / "a" / "b", "run folder root", "--flag")
    assert not (tmp_path / "a").exists()


def test_folder_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot write to the run folder root .*--flag"):
        check_writable_folder(tmp_path / "file" / "runs", "run folder root", "--flag")


def test_tracking_uris(tmp_path: Path) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    with pytest.raises(ConfigError, match="cannot write to the MLflow store folder"):
        (tmp_path / "file").write_text("x")
        check_tracking_uri(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    check_tracking_uri("databricks")  # other schemes are left to MLflow
    with pytest.raises(ConfigError, match="no longer reads folder"):
        check_tracking_uri("./mlruns")
    with pytest.raises(ConfigError, match="cannot reach the MLflow server"):
        check_tracking_uri("http://127.0.0.1:9", timeout_s=2)


@pytest.mark.parametrize(("observation_dim", "action_dim"), [(5, 1), (348, 17)])
def test_transition_bytes_are_what_a_buffer_row_takes(observation_dim: int, action_dim: int) -> None:
    transitions = TensorDict(
        {
            "observation": torch.zeros(4, observation_dim),
            "action": torch.zeros(4, action_dim),
            "next": {
                "observation": torch.zeros(4, observation_dim),
                "reward": torch.zeros(4, 1),
                "done": torch.zeros(4, 1, dtype=torch.bool),
                "terminated": torch.zeros(4, 1, dtype=torch.bool),
            },
        },
        batch_size=[4],
    )
    buffer = make_replay_buffer(100)
    buffer.extend(transitions)
    stored = buffer.storage._storage  # the preallocated rows
    assert sum(t.numel() * t.element_size() for t in stored.values(True, True)) == 100 * transition_bytes(observation_dim, action_dim)


def test_buffers_that_outgrow_the_memory_available_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(preflight, "available_memory", lambda: 10 * 10**9)
    check_buffer_room(4 * 10**9, 5 * 10**9, None, 1, "FIX")  # 9 GB of 10
    with pytest.raises(ConfigError, match=r"would grow to 12.0 GB of memory in this run, but 10.0 GB is available. FIX"):
        check_buffer_room(1 * 10**9, 5 * 10**9, None, 2, "FIX")  # two DDP ranks, each with its buffers
    check_buffer_room(4 * 10**9, 50 * 10**9, "/tmp", 1, "FIX")  # the model buffer on disk: 4 GB in memory


def test_the_longest_rollouts_working_memory_counts_beside_the_buffers(monkeypatch) -> None:
    monkeypatch.setattr(preflight, "available_memory", lambda: 10 * 10**9)
    check_buffer_room(4 * 10**9, 5 * 10**9, None, 1, "FIX", working_bytes=10**9)  # 10 GB of 10
    message = r"would grow to 11.0 GB of memory in this run \(2.0 GB of it the longest rollout's working memory\), but 10.0 GB"
    with pytest.raises(ConfigError, match=message):
        check_buffer_room(4 * 10**9, 5 * 10**9, None, 1, "FIX", working_bytes=2 * 10**9)
    with pytest.raises(ConfigError, match=r"would grow to 12.0 GB .*\(10.0 GB of it the longest rollout's"):
        check_buffer_room(2 * 10**9, 50 * 10**9, "/tmp", 1, "FIX", working_bytes=10 * 10**9)  # rolled out in memory


def test_a_rollouts_working_memory_grows_with_its_states_steps_and_transition_size() -> None:
    one = rollout_bytes(1000, 10, observation_dim=5, action_dim=1)
    assert one == 1000 * 10 * ROLLOUT_TRANSITIONS_PER_STEP * transition_bytes(5, 1)
    assert rollout_bytes(2000, 10, 5, 1) == 2 * one and rollout_bytes(1000, 20, 5, 1) == 2 * one
    assert rollout_bytes(1000, 10, 11, 3) > one


def test_a_memory_mapped_model_buffer_that_outgrows_its_disk_is_refused(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(preflight, "available_memory", lambda: None)  # unknown: not checked
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 * 10**9, 70 * 10**9, 30 * 10**9))
    check_buffer_room(10**12, 29 * 10**9, str(tmp_path / "scratch"), 1, "FIX")
    with pytest.raises(ConfigError, match=r"model buffer would grow to 36.0 GB in model_buffer_dir=.*its disk has 30.0 GB free. FIX"):
        check_buffer_room(0, 36 * 10**9, str(tmp_path / "scratch"), 1, "FIX")
