"""``cli.py fit --config configs/mbpo_async.yaml`` end to end: three roles, one MLflow run, clean stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from cli_runner import ROOT, TINY, TINY_MBPO, only_run, run_cli, store_args
from lifecycle_runner import group_alive

from nmbrl.random_streams import COLLECTOR, WORLD_MODEL, role_seed, segment_stream

ASYNC = ["fit", "--config", "configs/mbpo_async.yaml", *TINY, *TINY_MBPO, "--collection.log_every_s", "1"]
ROLE_METRICS = {
    "collector": {"collector/env_steps_per_s", "collector/policy_version", "collector/policy_age_updates", "pacing/update_ratio"},
    "world_model": {
        "world_model/updates_per_s", "world_model/version", "world_model/data_age_steps", "time/model_training_s", "model/holdout_mse"
    },
    "agent": {
        "time/updates_per_s", "agent/world_model_version", "agent/world_model_age_steps", "agent/policy_version", "agent/torch_threads",
        "rollout/world_model_age_steps",
    },
}


def start_cli(*args: str, store: Path) -> subprocess.Popen:
    """The CLI in its own process group, as a terminal runs it, so that every process it starts can be found."""
    command = [sys.executable, "cli.py", *args, *store_args(store)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).parent), "NMBRL_PROBE_DIR": str(store)}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # a hung run: kill its whole group, so that it does not outlive the test
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the run did not end within {timeout} s:\n{output[-3000:]}")
    time.sleep(0.5)  # the children's own exit, after the parent's
    assert not group_alive(process.pid), f"processes of the run are still alive:\n{output[-2000:]}"
    return output


def metric_values(store: Path, run, key: str) -> list[float]:
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    return [m.value for m in client.get_metric_history(run.info.run_id, key)]


def last_checkpoint(store: Path, run) -> Path:
    return store / "runs" / run.info.experiment_id / run.info.run_id / "checkpoints" / "last.ckpt"


def test_concurrent_fit_runs_three_roles_into_one_mlflow_run(store: Path) -> None:
    # With the config's compiled update (TINY turns compilation off for the other tests): it trains while
    # the roles read its weights live.
    process = start_cli(*ASYNC, "--model.compile", "true", store=store)
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    assert "the SAC update is compiled at its first call" in output
    run = only_run(store)
    assert run.info.status == "FINISHED"
    for role, metrics in ROLE_METRICS.items():
        assert metrics <= set(run.data.metrics), f"{role}: missing {metrics - set(run.data.metrics)}"
    # Weights flow: the collector acts with newer and newer policies, the agent imagines with newer models.
    assert max(metric_values(store, run, "collector/policy_version")) > 1
    assert max(metric_values(store, run, "agent/world_model_version")) >= 2
    assert len(metric_values(store, run, "rollout/horizon")) >= 2  # rollouts wait for new models, and get them
    assert run.data.metrics["env_steps"] >= 400
    assert last_checkpoint(store, run).is_file()


@pytest.mark.slow
def test_ctrl_c_stops_every_role_with_a_final_checkpoint_that_resumes(store: Path) -> None:
    process = start_cli(*ASYNC, "--trainer.max_epochs", "50", store=store)
    for line in process.stdout:  # the first evaluation: every role is running
        if line.startswith("epoch 0:"):
            break
    interrupted_at = time.time()
    os.killpg(process.pid, signal.SIGINT)  # Ctrl+C in a terminal reaches the whole group
    output = finish(process, timeout=60)
    assert time.time() - interrupted_at < 30, "stopping took too long"
    assert process.returncode == 130 and "KeyboardInterrupt" in output, output[-3000:]
    run = only_run(store)
    assert run.info.status == "KILLED"
    checkpoint = last_checkpoint(store, run)
    assert checkpoint.stat().st_mtime >= interrupted_at
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["global_step"] >= 100  # at least the first epoch
    env_steps = saved["nmbrl"]["env_steps"]

    probe = "--trainer.callbacks+=schedule_probe.RecordFirstPolicy"
    resumed = start_cli(*ASYNC, "--trainer.max_epochs", "3", "--ckpt_path", "last", probe, store=store)
    output = finish(resumed)
    assert resumed.returncode == 0, output[-3000:]
    # The collector was handed the resumed policy stamped with the resumed update count, so that its
    # policy ages are right from the first step (not counted from 0).
    first_policy = json.loads((store / "first_policy.json").read_text())
    role_seeds, run_seed = first_policy.pop("role_seeds"), first_policy.pop("run_seed")
    assert first_policy == {"global_step": saved["global_step"], "version": 1, "stamp": saved["global_step"]}
    # The roles draw on from streams of their own, not from the start of the run's streams again.
    assert role_seeds == {name: role_seed(run_seed, segment_stream(name, env_steps)) for name in (COLLECTOR, WORLD_MODEL)}
    assert role_seeds[COLLECTOR] != role_seed(run_seed, COLLECTOR)
    assert "before the epoch ended" not in output  # Lightning's warning about loaders that cannot resume
    run = only_run(store)  # the same MLflow run, continued
    assert run.info.status == "FINISHED"
    assert run.data.metrics["env_steps"] > env_steps


def test_sigterm_to_the_whole_group_stops_the_run_as_ctrl_c_does(store: Path) -> None:
    """Slurm's scancel and systemd send SIGTERM to every process of a job: the roles leave the stop to the parent."""
    process = start_cli(*ASYNC, "--trainer.max_epochs", "50", store=store)
    for line in process.stdout:  # the first evaluation: every role is running
        if line.startswith("epoch 0:"):
            break
    os.killpg(process.pid, signal.SIGTERM)
    output = finish(process, timeout=60)
    assert process.returncode == 143, output[-3000:]
    assert "Stopped by SIGTERM" in output and "role failed" not in output, output[-3000:]
    run = only_run(store)
    assert run.info.status == "KILLED"
    saved = torch.load(last_checkpoint(store, run), weights_only=False)
    assert saved["global_step"] >= 100  # at least the first epoch
    # The world-model role was still alive to hand over its final state (its optimizer's, which only it steps).
    world_model = next(state for key, state in saved["callbacks"].items() if key.startswith("WorldModelTrainingProcess"))
    assert world_model["optimizer"]["state"], "the world-model role died with the signal; its final state is lost"


@pytest.mark.slow
def test_a_failed_role_stops_the_run_with_its_error_and_a_checkpoint(store: Path) -> None:
    process = start_cli(*ASYNC, "--model_training", "faulty_roles.FailingWorldModelTrainingProcess", store=store)
    output = finish(process, timeout=300)
    assert process.returncode != 0
    assert "the world_model role failed" in output and "RuntimeError: injected world-model failure" in output, output[-3000:]
    run = only_run(store)
    assert run.info.status == "FAILED"
    assert last_checkpoint(store, run).is_file()


def recorded_schedule(config: str, store: Path, *args: str) -> list[list[int]]:
    """Per agent batch of a tiny run: env steps seen, updates made, env steps of the model's data, next rollout."""
    store.mkdir()
    result = run_cli(
        "fit", "--config", config, *TINY, *TINY_MBPO, "--data.updates_per_step", "2",
        "--trainer.callbacks+=schedule_probe.RecordSchedule", *args,
        store=store, extra_env={"NMBRL_PROBE_DIR": str(store), "PYTHONPATH": str(Path(__file__).parent)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((store / "schedule.json").read_text())


def test_lockstep_keeps_sync_modes_schedule_exactly(tmp_path: Path) -> None:
    # Every batch follows the same env step, after the same updates, with a model trained on the same
    # data and the same rollouts, as in sync mode; the collector acts with the policy sync mode would.
    sync = recorded_schedule("configs/mbpo.yaml", tmp_path / "sync")
    lockstep_store = tmp_path / "lockstep"
    lockstep = recorded_schedule("configs/mbpo_async.yaml", lockstep_store, "--collection.lockstep", "true", "--collection.log_every_s", "0.05")
    assert len(sync) == 200 and lockstep == sync
    assert [row[2] for row in sync][::100] == [201, 300]  # retrained at exploration's end, then every 100 steps
    run = only_run(lockstep_store)
    assert set(metric_values(lockstep_store, run, "collector/policy_age_updates")) == {0.0}
    assert set(metric_values(lockstep_store, run, "rollout/world_model_age_steps")) == {0.0}


def test_the_overlapping_default_does_run_ahead(tmp_path: Path) -> None:
    # The control for the test above: without lockstep the collector does lead, so the probe can tell.
    overlapping = recorded_schedule("configs/mbpo_async.yaml", tmp_path / "overlap", "--collection.log_every_s", "0.05")
    run = only_run(tmp_path / "overlap")
    assert max(metric_values(tmp_path / "overlap", run, "collector/policy_age_updates")) > 0
    assert len(overlapping) == 200


@pytest.mark.slow
def test_a_lockstep_run_repeats_exactly_for_its_seed(tmp_path: Path) -> None:
    # Every role draws from the run's seed (each its own stream), so lockstep, whose order of events
    # is fixed, gives the same run twice: the same returns and the same weights.
    outcomes = []
    for attempt in ("first", "second"):
        store = tmp_path / attempt
        result = run_cli(*ASYNC, "--collection.lockstep", "true", "--seed_everything", "5", store=store)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "phase=waiting for the world-model process" in result.stdout  # the bar says why it stands still
        run = only_run(store)
        checkpoint = torch.load(last_checkpoint(store, run), map_location="cpu", weights_only=False)
        outcomes.append((metric_values(store, run, "eval/return_mean"), checkpoint["state_dict"]))
    (first_returns, first_weights), (second_returns, second_weights) = outcomes
    assert len(first_returns) == 2 and first_returns == second_returns
    assert first_weights.keys() == second_weights.keys()
    assert all(torch.equal(first_weights[key], second_weights[key]) for key in first_weights)


@pytest.mark.slow
def test_lockstep_is_sync_mode_number_for_number(tmp_path: Path) -> None:
    # Lockstep is sync mode's computation spread over three processes, and sync mode draws its
    # collection and its retrainings from the streams the role processes draw from
    # (nmbrl.random_streams). So for one seed the two runs agree exactly: eval returns, agent
    # weights and world model. A sync run of another seed is the control: the comparison can
    # tell two runs apart.
    common = ["--torch_threads", "1", "--data.updates_per_step", "2"]
    outcomes = {}
    for mode, args in {
        "sync": ["--config", "configs/mbpo.yaml", "--seed_everything", "5"],
        "lockstep": ["--config", "configs/mbpo_async.yaml", "--collection.lockstep", "true", "--seed_everything", "5"],
        "sync, another seed": ["--config", "configs/mbpo.yaml", "--seed_everything", "6"],
    }.items():
        store = tmp_path / mode.replace(", ", "-").replace(" ", "-")
        result = run_cli("fit", *args, *TINY, *TINY_MBPO, *common, store=store)
        assert result.returncode == 0, result.stderr[-3000:]
        run = only_run(store)
        checkpoint = torch.load(last_checkpoint(store, run), map_location="cpu", weights_only=False)
        world_model = next(state for key, state in checkpoint["callbacks"].items() if "WorldModelTraining" in key)
        outcomes[mode] = (metric_values(store, run, "eval/return_mean"), checkpoint["state_dict"], world_model["world_model"])
    (sync_returns, sync_agent, sync_model), (lockstep_returns, lockstep_agent, lockstep_model), (_, other_agent, _) = outcomes.values()
    assert len(sync_returns) == 2 and lockstep_returns == sync_returns
    assert sync_agent.keys() == lockstep_agent.keys() and len(sync_agent) > 0
    assert [key for key in sync_agent if not torch.equal(sync_agent[key], lockstep_agent[key])] == []
    assert [key for key in sync_model if not torch.equal(sync_model[key], lockstep_model[key])] == []
    assert not all(torch.equal(other_agent[key], lockstep_agent[key]) for key in lockstep_agent)
