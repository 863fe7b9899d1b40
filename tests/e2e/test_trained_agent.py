"""A trained agent outside the CLI: the README example, load_from_checkpoint, the MLflow model, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from nmbrl import ConfigError, load_agent, load_world_model
from nmbrl.serving import log_policy_model
from cli_runner import ROOT, fitted_store, only_run, run_cli, run_folder

# SAC on Pendulum-v1: episodes of 200 steps with no early end and rewards that vary every step,
# so that a replayed episode matching cli.py test's return is a real check.
PENDULUM = [
    "--config", "configs/sac.yaml",
    "--data.env", "Pendulum-v1",
    "--trainer.max_epochs", "1",
    "--data.random_steps", "200",
    "--data.epoch_length", "200",
    "--data.batch_size", "64",
    "--evaluation.episodes", "1",
    "--evaluation.max_episode_steps", "200",
    "--model.averaged_policy_tau", "0.01",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return fitted_store(tmp_path_factory.mktemp("pendulum"), *PENDULUM)


def tracking_uri(store: Path) -> str:
    return f"sqlite:///{store / 'mlflow.db'}"


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_readme_example_is_examples_play_py() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert (ROOT / "examples/play.py").read_text() in blocks


def test_the_example_replays_cli_test_episodes_to_the_same_return(trained: Path) -> None:
    folder = run_folder(trained)
    result = run_cli(
        "test", "--config", str(folder / "config.yaml"), "--ckpt_path", "last", "--data.test_episodes", "2",
        "--evaluation.video", "none",  # classic-control rendering needs pygame, which is not installed
        store=trained,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| (\d) \| (-?[\d.]+) \| (\d+) \| (\d+) \|$", result.stdout, flags=re.M)
    assert len(rows) == 2
    for _, test_return, _, seed in rows:
        played = subprocess.run(
            [sys.executable, "examples/play.py", str(folder), "--seed", seed], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert played.returncode == 0, played.stderr[-3000:]
        assert played.stdout.strip() == f"return {test_return}"
    assert rows[0][1] != rows[1][1]  # the two seeds start from different states


def test_load_agent_acts_the_same_from_a_checkpoint_a_run_folder_and_a_run_id(trained: Path) -> None:
    folder = run_folder(trained)
    observations = np.random.default_rng(0).normal(size=(8, 3))

    by_file = load_agent(folder / "checkpoints" / "last.ckpt").act(observations)
    by_folder = load_agent(folder).act(observations)
    by_run_id = load_agent(folder.name, tracking_uri=tracking_uri(trained)).act(observations)

    np.testing.assert_array_equal(by_file, by_folder)
    np.testing.assert_array_equal(by_file, by_run_id)
    assert by_file.shape == (8, 1) and (np.abs(by_file) <= 2.0).all()  # Pendulum's torque bounds


def test_the_averaged_policy_acts_by_default_as_in_evaluation(trained: Path) -> None:
    folder = run_folder(trained)
    agent = load_agent(folder)
    actor = load_agent(folder, averaged=False)
    observations = torch.randn(8, 3)

    assert agent.policy is agent.agent.averaged_actor.module
    assert not torch.allclose(agent.act(observations), actor.act(observations))


def test_the_policy_is_an_mlflow_model_that_loads_in_a_fresh_process(trained: Path) -> None:
    folder = run_folder(trained)
    run = only_run(trained)
    assert len(run.outputs.model_outputs) >= 1  # "Logged models" on the run's page (the registration test adds one)
    observations = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    code = (
        "import json, sys, mlflow, numpy as np\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "model = mlflow.pyfunc.load_model(f'runs:/{sys.argv[2]}/policy')\n"
        "print(json.dumps(model.predict(np.array(json.loads(sys.argv[3]), dtype=np.float32)).tolist()))\n"
    )

    result = python(code, tracking_uri(trained), run.info.run_id, json.dumps(observations.tolist()))

    assert result.returncode == 0, result.stderr[-3000:]
    predicted = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_array_equal(predicted, load_agent(folder).act(observations))


def test_the_policy_model_can_be_registered_under_a_name(trained: Path) -> None:
    folder = run_folder(trained)
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    agent = load_agent(folder).agent

    log_policy_model(agent, checkpoint["nmbrl"], tracking_uri(trained), folder.name, registered_model_name="pendulum-policy")

    client = mlflow.MlflowClient(tracking_uri(trained))
    versions = client.search_model_versions("name='pendulum-policy'")
    assert [v.run_id for v in versions] == [folder.name]


def test_load_from_checkpoint_works_in_a_fresh_process_without_a_trainer(trained: Path) -> None:
    checkpoint = run_folder(trained) / "checkpoints" / "last.ckpt"
    code = (
        "import sys, torch\n"
        "from nmbrl.agent import SACAgent\n"
        "agent = SACAgent.load_from_checkpoint(sys.argv[1])\n"
        "print(agent.averaged_actor is not None, sum(p.numel() for p in agent.parameters()))\n"
    )

    result = python(code, str(checkpoint))

    assert result.returncode == 0, result.stderr[-3000:]
    averaged, parameters = result.stdout.split()[-2:]
    assert averaged == "True" and int(parameters) == sum(p.numel() for p in load_agent(checkpoint).agent.parameters())


@pytest.mark.parametrize(
    ("source", "uri", "message"),
    [
        ("no/such/run", None, "neither a file, nor a folder, nor an MLflow run id"),
        ("0123456789abcdef0123456789abcdef", "db", "no MLflow run 0123456789abcdef0123456789abcdef"),
        ("0123456789abcdef0123456789abcdef", "sqlite:////nonexistent/mlflow.db", "no MLflow store at"),
        ("0123456789abcdef0123456789abcdef", "http://127.0.0.1:9", "cannot reach the MLflow server"),
    ],
)
def test_bad_sources_name_the_fix(trained: Path, source: str, uri: str | None, message: str) -> None:
    uri = tracking_uri(trained) if uri == "db" else uri or "sqlite:///runs/mlflow.db"
    with pytest.raises(ConfigError, match=message):
        load_agent(source, tracking_uri=uri)


def test_a_sac_run_has_no_world_model_to_load(trained: Path) -> None:
    with pytest.raises(ConfigError, match="trained without one"):
        load_world_model(run_folder(trained))


def test_a_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, path)

    with pytest.raises(ConfigError, match="not an NMBRL checkpoint"):
        load_agent(path)


def test_the_example_stops_with_one_error_line_on_a_bad_source(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "examples/play.py", str(tmp_path / "missing.ckpt")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )

    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
