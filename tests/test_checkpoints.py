"""Checkpoint files: atomic writes, the NMBRL record, finding the last one, environment checks."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from nmbrl.checkpoints import (
    AtomicCheckpointIO,
    check_same_env,
    check_same_run_kind,
    find_last_checkpoint,
    read_checkpoint_info,
    take_configured_hyperparameters,
)
from nmbrl.errors import ConfigError

RECORD = {"run_id": "abc", "tracking_uri": "sqlite:///x.db", "env": "Hopper-v5", "observation_dim": 11, "action_dim": 3, "env_steps": 7}


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"nmbrl": RECORD, "x": torch.ones(3)}, path)
    io.save_checkpoint({"nmbrl": {**RECORD, "env_steps": 8}, "x": torch.zeros(3)}, path)
    assert read_checkpoint_info(path).env_steps == 8
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_save_removes_the_temporary_file_of_a_killed_writer(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".epoch=1-step=200.ckpt.{dead.pid}.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / f".other.ckpt.{os.getpid()}.tmp").write_bytes(b"a live writer's file")
    AtomicCheckpointIO().save_checkpoint({"nmbrl": RECORD}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.ckpt.{os.getpid()}.tmp", "last.ckpt"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"nmbrl": RECORD}, path)
    with pytest.raises(Exception):
        io.save_checkpoint({"nmbrl": RECORD, "unpicklable": lambda: None}, path)
    assert read_checkpoint_info(path).run_id == "abc"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_record_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        read_checkpoint_info(tmp_path / "missing.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"nmbrl": RECORD, "x": torch.ones(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(ConfigError, match="corrupt or truncated"):
        read_checkpoint_info(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ConfigError, match="not an NMBRL checkpoint"):
        read_checkpoint_info(foreign)


def test_find_last_checkpoint_takes_the_newest_run_of_the_experiment(tmp_path: Path) -> None:
    older, newer, other = (tmp_path / "1" / "a", tmp_path / "1" / "b", tmp_path / "2" / "c")
    for i, run in enumerate((older, newer, other)):
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        os.utime(run / "checkpoints" / "last.ckpt", (time.time() + i, time.time() + i))
    assert find_last_checkpoint(tmp_path, "1") == newer / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="no checkpoint of this experiment"):
        find_last_checkpoint(tmp_path, "3")


def test_check_same_env_compares_sizes(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    torch.save({"nmbrl": RECORD}, path)
    info = read_checkpoint_info(path)
    check_same_env(info, "Hopper-v5", 11, 3)
    with pytest.raises(ConfigError, match="trained on 'Hopper-v5' .*observation size 11.*'Walker2d-v5' \\(observation size 17"):
        check_same_env(info, "Walker2d-v5", 17, 6)


def test_check_same_env_compares_the_action_repeat(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    torch.save({"nmbrl": {**RECORD, "action_repeat": 4}}, path)
    info = read_checkpoint_info(path)
    check_same_env(info, "Hopper-v5", 11, 3, action_repeat=4)
    with pytest.raises(ConfigError, match="trained with action_repeat=4, but the config asks for action_repeat=1"):
        check_same_env(info, "Hopper-v5", 11, 3, action_repeat=1)


def test_checkpoints_from_before_action_repeat_read_as_repeat_one(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    torch.save({"nmbrl": RECORD}, path)  # RECORD has no action_repeat
    assert read_checkpoint_info(path).action_repeat == 1


WORLD_MODEL_STATE = {"world_model": {"w": torch.zeros(2)}, "next_training_at": 250}


@pytest.mark.parametrize("trainer_key", [None, "WorldModelTraining", "WorldModelTrainingProcess"])
def test_the_record_names_the_callback_that_trained_the_world_model(tmp_path: Path, trainer_key: str | None) -> None:
    states = {"Evaluation": {"history": []}, "RunLifecycle": {"rng": {}}}
    if trainer_key is not None:
        states[trainer_key] = WORLD_MODEL_STATE
    torch.save({"nmbrl": RECORD, "callbacks": states}, tmp_path / "c.ckpt")
    assert read_checkpoint_info(tmp_path / "c.ckpt").world_model_trainer == trainer_key


def test_a_checkpoint_resumes_only_with_its_own_algorithm_and_mode(tmp_path: Path) -> None:
    run = tmp_path / "1" / "abc"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("data: {}\n")
    path = run / "checkpoints" / "last.ckpt"
    torch.save({"nmbrl": RECORD, "callbacks": {"WorldModelTrainingProcess": WORLD_MODEL_STATE}}, path)
    info = read_checkpoint_info(path)

    check_same_run_kind(info, "WorldModelTrainingProcess")
    with pytest.raises(ConfigError, match=r"written by concurrent MBPO .*this config runs sync MBPO") as error:
        check_same_run_kind(info, "WorldModelTraining", picked_as_last="mbpo-hopper-v5")
    assert f"--config {run / 'config.yaml'}" in str(error.value) and "'mbpo-hopper-v5'" in str(error.value)
    with pytest.raises(ConfigError, match=r"this config runs SAC") as error:
        check_same_run_kind(info, None)
    assert "--ckpt_path last" not in str(error.value)


def test_a_resumed_optimizer_keeps_its_state_and_takes_the_configured_hyperparameters() -> None:
    weights = torch.nn.Linear(3, 2)
    trained = torch.optim.Adam(weights.parameters(), lr=3e-4, betas=(0.9, 0.999))
    weights(torch.randn(4, 3)).sum().backward()
    trained.step()
    saved = trained.state_dict()
    configured = torch.optim.Adam(weights.parameters(), lr=1e-4, betas=(0.5, 0.999))

    changes = take_configured_hyperparameters(saved, configured)
    configured.load_state_dict(saved)

    assert changes == ["lr 0.0003 -> 0.0001", "betas (0.9, 0.999) -> (0.5, 0.999)"]
    assert configured.param_groups[0]["lr"] == 1e-4 and configured.param_groups[0]["betas"] == (0.5, 0.999)
    for name in ("exp_avg", "exp_avg_sq", "step"):  # the moments and step counts are the trained optimizer's
        assert all(torch.equal(configured.state[p][name], trained.state[p][name]) for p in weights.parameters())
    assert take_configured_hyperparameters(configured.state_dict(), configured) == []
    # Another number of groups: nothing is changed, and loading fails as PyTorch makes it.
    grouped = torch.optim.Adam([{"params": [weights.weight]}, {"params": [weights.bias], "lr": 1.0}], lr=1e-4)
    assert take_configured_hyperparameters(saved, grouped) == [] and saved["param_groups"][0]["lr"] == 1e-4
