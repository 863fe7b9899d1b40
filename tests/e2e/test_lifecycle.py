"""Run lifecycle through the real CLI: resume, test with a video, Ctrl+C, kill -9, divergence, determinism."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import imageio.v2 as imageio
import mlflow
import pytest
import torch
from cli_runner import ROOT, TINY, TINY_MBPO, fitted_store, only_run, run_cli, run_folder
from lifecycle_runner import buffer_length, checkpoints, load, send_and_wait, start_cli, wait_for

from nmbrl import load_agent, load_imagined_env, load_world_model

PENDULUM = ["--config", "configs/mbpo.yaml", "--data.env", "InvertedPendulum-v5", *TINY, *TINY_MBPO]


def client(store: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")


def history(store: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client(store).get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-epoch MBPO run on InvertedPendulum (400 env steps)."""
    return fitted_store(tmp_path_factory.mktemp("trained"), *PENDULUM)


def test_resume_continues_the_same_run_with_full_buffers(trained: Path) -> None:
    run = only_run(trained)
    before = load(checkpoints(trained)[0])
    assert before["nmbrl"]["env_steps"] == 400 and before["nmbrl"]["run_id"] == run.info.run_id
    assert buffer_length(before, "real_buffer") == 400 and buffer_length(before, "model_buffer") > 0

    result = run_cli("fit", *PENDULUM, "--trainer.max_epochs", "3", "--ckpt_path", "last", store=trained)
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = only_run(trained)  # still one run: the same one, finished again
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert [step for step, _ in history(trained, run.info.run_id, "eval/return_mean")] == [300, 400, 500]
    after = load(checkpoints(trained)[0])
    assert after["nmbrl"]["env_steps"] == 500
    assert buffer_length(after, "real_buffer") == 500  # 400 restored + 100 new, none lost
    assert after["global_step"] == before["global_step"] + 100


def test_a_resumed_fit_steps_with_the_configs_learning_rates_and_keeps_the_checkpoints_networks(tmp_path: Path) -> None:
    # Before, Lightning put the checkpoint's agent settings over the config's and PyTorch restored the
    # optimizers' old learning rates, both without a word: the divergence message's advice to resume
    # with a lower learning rate did nothing.
    store = fitted_store(tmp_path, *PENDULUM)
    changes = [
        "--model.optimizer.init_args.lr", "1e-4", "--model.tau", "0.01", "--model.hidden_sizes", "[64, 64]",
        "--model_training.world_model.init_args.optimizer", "torch.optim.Adam",
        "--model_training.world_model.init_args.optimizer.lr", "5e-4",
    ]  # fmt: skip
    result = run_cli("fit", *PENDULUM, "--trainer.max_epochs", "3", "--ckpt_path", "last", *changes, store=store)
    assert result.returncode == 0, result.stderr[-3000:]

    output = result.stdout + result.stderr
    assert "agent optimizer, from the config: lr 0.001 -> 0.0001" in output
    assert "world-model optimizer, from the config: lr 0.001 -> 0.0005" in output
    assert "agent settings from the config: tau 0.005 -> 0.01." in output
    assert "kept from the checkpoint, as its networks and buffers hold them: hidden_sizes=[256, 256] (the config asks for [64, 64])" in output
    after = load(checkpoints(store)[0])
    assert after["nmbrl"]["env_steps"] == 500
    assert after["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-4 and after["optimizer_states"][0]["state"]
    world_model = next(state for key, state in after["callbacks"].items() if "WorldModelTraining" in key)
    assert [group["lr"] for group in world_model["optimizer"]["param_groups"]] == [5e-4]
    assert after["hyper_parameters"]["tau"] == 0.01 and after["hyper_parameters"]["hidden_sizes"] == [256, 256]


def test_resume_without_imagined_data_in_the_checkpoint_refills_the_model_buffer_at_once(tmp_path: Path) -> None:
    # Rollouts every 150 env steps: at 200 and 300, then due at 450. The run stops at 400, so only
    # the refill on resume rolls out before 450; without it the agent would train on real data alone.
    args = [*PENDULUM, "--rollouts.every", "150", "--data.checkpoint_model_buffer", "false"]
    assert run_cli("fit", *args, store=tmp_path).returncode == 0
    before = load(checkpoints(tmp_path)[0])
    assert "model_buffer" not in before["RLDataModule"] and buffer_length(before, "real_buffer") == 400

    result = run_cli("fit", *args, "--trainer.max_epochs", "3", "--ckpt_path", "last", store=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    sizes = dict(history(tmp_path, only_run(tmp_path).info.run_id, "rollout/model_buffer_size"))
    assert [step for step in sizes if step > 300] == [401, 450]  # 401: the resumed run's first batch
    assert sizes[401] > 0


def test_test_command_prints_returns_and_logs_a_video(trained: Path) -> None:
    run = only_run(trained)
    folder = trained / "runs" / run.info.experiment_id / run.info.run_id
    result = run_cli(
        "test", "--config", str(folder / "config.yaml"), "--ckpt_path", "last",
        "--data.test_episodes", "3", "--evaluation.video", "gif", "--evaluation.video_size", "64",
        store=trained,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| mean ± std |" in result.stdout
    assert "video: recording episode 0 again at 64x64 ..." in result.stdout  # the bar stands still meanwhile
    rows = (folder / "test" / "test_returns.csv").read_text().splitlines()
    assert rows[0] == "episode,return,steps,seed" and len(rows) == 4
    assert [row.split(",")[3] for row in rows[1:]] == ["10000", "10001", "10002"]  # eval seed (seed 0 + 10000) + episode
    videos = list((folder / "test").glob("*.gif"))
    assert len(videos) == 1
    frames = imageio.mimread(videos[0])
    assert len(frames) > 1 and frames[0].shape[:2] == (64, 64)
    artifacts = {a.path for a in client(trained).list_artifacts(run.info.run_id, "test")}
    assert artifacts == {"test/test_returns.csv", f"test/{videos[0].name}"}
    assert only_run(trained).info.status == "FINISHED"  # testing left the training status alone


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_test_command_at_once_with_the_shells_status(trained: Path, tmp_path: Path, sig, status) -> None:
    """Before: SIGTERM only printed Lightning's "Received SIGTERM" and testing ran on to the end, status 0."""
    log = tmp_path / "log.txt"
    config = run_folder(trained) / "config.yaml"
    # Episodes enough for hours: only the signal can end it within the test's time.
    process = start_cli("test", "--config", str(config), "--ckpt_path", "last", "--data.test_episodes", "100000", store=trained, log=log)
    wait_for(lambda: "Loaded model weights" in log.read_text(), timeout=300, process=process, log=log)
    time.sleep(2)  # into the episodes
    try:
        stopped, seconds = send_and_wait(process, sig, timeout=60)
    finally:
        process.kill()
    output = log.read_text()
    assert stopped == status, output[-3000:]
    assert "Received SIGTERM" not in output and "Traceback" not in output, output[-3000:]
    assert only_run(trained).info.status == "FINISHED"  # the training run's status, as training left it
    print(f"stopped {seconds:.1f} s after the signal")


def test_resuming_a_finished_run_with_its_budget_trains_nothing_and_logs_no_second_policy(trained: Path) -> None:
    before = only_run(trained)
    result = run_cli("fit", *PENDULUM, "--ckpt_path", "last", store=trained)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no agent update since the checkpoint: the policy is not logged again." in result.stdout + result.stderr
    after = only_run(trained)
    assert len(before.outputs.model_outputs) >= 1
    assert len(after.outputs.model_outputs) == len(before.outputs.model_outputs)  # before: one more, the same policy
    assert after.info.status == "FINISHED"


def test_an_env_that_cannot_render_still_gets_its_test_returns(store: Path) -> None:
    # Pendulum-v1 takes no frame size (and renders through pygame): before, the test command failed
    # with a traceback after its episodes, and wrote no returns to the run folder or MLflow.
    pendulum = ["--config", "configs/sac.yaml", "--data.env", "Pendulum-v1", *TINY]
    assert run_cli("fit", *pendulum, store=store).returncode == 0
    result = run_cli("test", *pendulum, "--ckpt_path", "last", "--data.test_episodes", "2", store=store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no video: Pendulum-v1 could not be rendered here" in result.stdout + result.stderr
    assert "| mean ± std |" in result.stdout and "Traceback" not in result.stderr
    run = only_run(store)
    assert {a.path for a in client(store).list_artifacts(run.info.run_id, "test")} == {"test/test_returns.csv"}


def test_fit_saves_the_eval_curve(trained: Path) -> None:
    run = only_run(trained)
    folder = trained / "runs" / run.info.experiment_id / run.info.run_id
    assert (folder / "eval_returns.png").stat().st_size > 1000
    assert "eval_returns.png" in {a.path for a in client(trained).list_artifacts(run.info.run_id)}


def test_the_trained_world_model_loads_as_an_imagined_env_that_rolls_out_the_agent(trained: Path) -> None:
    folder = run_folder(trained)
    start = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)) * 0.05  # small angles and velocities

    env = load_imagined_env(folder, batch_size=4, start_states=start)
    # Rows go on after a predicted termination (TorchRL's rollout would stop at the first one).
    rollout = env.rollout(5, load_agent(folder).policy, break_when_any_done=False)

    assert rollout["next", "observation"].shape == (4, 5, 4)
    first = rollout["observation"][:, 0]
    assert all(any(torch.equal(row, candidate) for candidate in start) for row in first)  # drawn from start_states
    assert load_world_model(folder).trained


def test_checkpoint_of_another_environment_is_refused(trained: Path) -> None:
    result = run_cli("fit", "--config", "configs/mbpo.yaml", *TINY, "--ckpt_path", str(checkpoints(trained)[0]), store=trained)
    assert result.returncode == 2
    assert "InvertedPendulum-v5" in result.stderr and "observation size 4" in result.stderr
    assert "observation size 5" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("config", "kind"), [("configs/sac.yaml", "SAC"), ("configs/mbpo_async.yaml", "concurrent MBPO")])
def test_checkpoint_of_another_algorithm_or_mode_is_refused_before_the_run(trained: Path, config: str, kind: str) -> None:
    # Lightning would only warn, and train the world model afresh (or drop it) inside the old run.
    path = checkpoints(trained)[0]
    args = ["--config", config, "--data.env", "InvertedPendulum-v5", *TINY, "--ckpt_path", str(path)]
    result = run_cli("fit", *args, store=trained)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"was written by sync MBPO (configs/mbpo.yaml and the per-env configs), but this config runs {kind}" in result.stderr
    assert str(path.parents[1] / "config.yaml") in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_writes_a_checkpoint_and_marks_the_run_killed(store: Path) -> None:
    log = store / "log.txt"
    # A time limit far off, as batch jobs set one: its Timer's state goes into the checkpoint.
    process = start_cli("fit", *PENDULUM, "--trainer.max_epochs", "100", "--trainer.max_time", "01:00:00:00", store=store, log=log)
    wait_for(lambda: "epoch 0:" in log.read_text(), timeout=300, process=process, log=log)
    status, seconds = send_and_wait(process, signal.SIGINT)
    assert status == 130, log.read_text()[-3000:]  # as a shell reports a command stopped by Ctrl+C
    assert "Stopped by Ctrl+C" in log.read_text()
    assert "rank_zero" not in log.read_text()  # a plain message, without a warning's source line
    assert "weights_only" not in log.read_text()  # no stray Lightning notice in the user's terminal
    checkpoint = load(checkpoints(store)[0])
    assert checkpoint["nmbrl"]["env_steps"] >= 300  # past the first epoch, wherever it stopped
    assert buffer_length(checkpoint, "real_buffer") == checkpoint["nmbrl"]["env_steps"]
    run = only_run(store)
    assert run.info.status == "KILLED"
    assert len(run.outputs.model_outputs) == 1  # the policy, logged as an MLflow model on the way out
    print(f"stopped {seconds:.1f} s after SIGINT")

    # It resumes from that mid-epoch checkpoint, without Lightning's warning that the loader cannot resume.
    stopped_at = checkpoint["nmbrl"]["env_steps"]
    result = run_cli("fit", *PENDULUM, "--trainer.max_epochs", str(checkpoint["epoch"] + 2), "--ckpt_path", "last", store=store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "before the epoch ended" not in result.stdout + result.stderr
    # Nor Lightning's warnings that the run's own checkpoint folder is not empty, or that the Timer is missing.
    assert "exists and is not empty" not in result.stderr and "['Timer']" not in result.stderr, result.stderr[-3000:]
    run = only_run(store)
    assert run.info.status == "FINISHED" and run.data.metrics["env_steps"] > stopped_at


def test_sigterm_stops_like_ctrl_c_with_a_final_checkpoint_and_status_143(store: Path) -> None:
    """``kill``, ``timeout`` and job schedulers stop a run with SIGTERM: nothing may be lost to it either."""
    log = store / "log.txt"
    process = start_cli("fit", *PENDULUM, "--trainer.max_epochs", "100", store=store, log=log)
    wait_for(lambda: "epoch 0:" in log.read_text(), timeout=300, process=process, log=log)
    status, _ = send_and_wait(process, signal.SIGTERM)
    output = log.read_text()
    assert status == 143, output[-3000:]  # as a shell reports a command ended by SIGTERM
    stopped = re.search(r"Stopped by SIGTERM at (\d+) env steps", output)
    assert stopped and "Traceback" not in output, output[-3000:]
    checkpoint = load(checkpoints(store)[0])
    assert checkpoint["nmbrl"]["env_steps"] == int(stopped[1])  # the final checkpoint, where it stopped
    assert buffer_length(checkpoint, "real_buffer") == checkpoint["nmbrl"]["env_steps"]
    run = only_run(store)
    assert run.info.status == "KILLED"
    assert len(run.outputs.model_outputs) == 1  # the policy, logged on the way out


def test_kill_9_then_resume_continues_from_the_last_checkpoint(store: Path) -> None:
    log = store / "log.txt"
    process = start_cli("fit", *PENDULUM, "--trainer.max_epochs", "100", store=store, log=log)
    wait_for(lambda: "epoch 1:" in log.read_text(), timeout=300, process=process, log=log)
    send_and_wait(process, signal.SIGKILL)
    run_id = only_run(store).info.run_id
    saved = load(checkpoints(store)[0])["nmbrl"]["env_steps"]
    assert saved >= 300

    result = run_cli("fit", *PENDULUM, "--trainer.max_epochs", "4", "--ckpt_path", "last", store=store)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(store)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert load(checkpoints(store)[0])["nmbrl"]["env_steps"] == 600
    assert history(store, run_id, "eval/return_mean")[-1][0] == 600
    # The store and the run folder are intact: sqlite's own check, and no temporary checkpoint files left behind.
    assert sqlite3.connect(store / "mlflow.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not list(store.glob("runs/**/.*.tmp"))


def test_nan_losses_are_rejected_and_training_recovers(store: Path) -> None:
    result = run_cli(
        "fit", *PENDULUM, "--trainer.callbacks+=nan_probe.PoisonRewards", "--trainer.callbacks.init_args.count=3",
        store=store, extra_env={"PYTHONPATH": str(ROOT / "tests" / "e2e")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("skipped it and restored the weights") == 3
    run = only_run(store)
    assert run.info.status == "FINISHED" and run.data.metrics["train/rejected_updates"] == 3
    weights = load(checkpoints(store)[0])["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_persistent_nan_stops_with_a_message_and_a_usable_checkpoint(store: Path) -> None:
    result = run_cli(
        "fit", *PENDULUM, "--trainer.callbacks+=nan_probe.PoisonRewards", "--trainer.callbacks.init_args.count=-1",
        "--model.divergence_patience", "5",
        store=store, extra_env={"PYTHONPATH": str(ROOT / "tests" / "e2e")},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr[-3000:]
    assert "error: training diverged: 5 updates in a row were rejected" in result.stderr
    assert only_run(store).info.status == "FAILED"
    checkpoint = load(checkpoints(store)[0])
    assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values() if w.is_floating_point())


def test_same_seed_gives_the_same_run(tmp_path: Path) -> None:
    def curves(store: Path, *extra: str) -> tuple[list, list]:
        result = run_cli("fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, *extra, store=store)
        assert result.returncode == 0, result.stderr[-3000:]
        run_id = only_run(store).info.run_id
        return history(store, run_id, "eval/return_mean"), history(store, run_id, "train/critic_loss")

    first, second = curves(tmp_path / "a"), curves(tmp_path / "b")
    assert first == second and len(first[0]) == 2
    assert curves(tmp_path / "c", "--seed_everything", "1") != first


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ckpt_path", "missing.ckpt"], "no such checkpoint file"),
        (["--ckpt_path", "last"], "nothing to resume"),
        (["--trainer.logger.init_args.tracking_uri", "http://127.0.0.1:9"], "cannot reach the MLflow server"),
        (["--trainer.logger.init_args.tracking_uri", "./mlruns"], "Use a database"),
    ],
)
def test_bad_run_input_gets_one_clear_error(store: Path, args: list[str], message: str) -> None:
    # Later flags win, so these replace the store's own settings.
    result = run_cli("fit", "--config", "configs/mbpo.yaml", store=store, extra_args=args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_corrupt_checkpoint_gets_one_clear_error(store: Path) -> None:
    broken = store / "broken.ckpt"
    broken.write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = run_cli("fit", "--config", "configs/mbpo.yaml", "--ckpt_path", str(broken), store=store)
    assert result.returncode == 2
    assert "corrupt or truncated" in result.stderr and "Traceback" not in result.stderr


def test_run_folder_without_write_permission_gets_one_clear_error(store: Path) -> None:
    locked = store / "locked"
    locked.mkdir(mode=0o500)
    # root ignores file modes; /sys refuses everyone.
    root_dir = "/sys/nmbrl-runs" if os.geteuid() == 0 else str(locked / "runs")
    result = run_cli("fit", "--config", "configs/mbpo.yaml", store=store, extra_args=["--trainer.default_root_dir", root_dir])
    assert result.returncode == 2
    assert "cannot write to the run folder root" in result.stderr and "--trainer.default_root_dir" in result.stderr
