"""Helpers to run the real CLI in a subprocess with a tiny budget and read its MLflow run back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[2]

# Small enough to finish in well under a minute on 2 CPU cores, big enough that every phase runs:
# exploration, 2 epochs, 2 model retrainings, 2 rollouts and 2 evaluations.
TINY = [
    "--trainer.max_epochs", "2",
    "--trainer.log_every_n_steps", "10",
    "--data.random_steps", "200",
    "--data.epoch_length", "100",
    "--data.updates_per_step", "1",
    "--data.batch_size", "64",
    "--evaluation.episodes", "1",
    "--evaluation.max_episode_steps", "100",
    # Eager updates: compiling one takes 5-30 s a process. The compiled update has its own tests
    # (tests/e2e/test_fit.py, tests/agent/test_update.py).
    "--model.compile", "false",
]  # fmt: skip
TINY_MBPO = [
    "--model_training.every", "100",
    "--model_training.world_model.init_args.max_epochs", "5",
    "--model_training.world_model.init_args.hidden_size", "32",
    "--rollouts.every", "100",
    "--rollouts.batch_size", "200",
]  # fmt: skip


def run_cli(
    *args: str,
    store: Path,
    timeout: float = 600,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """``python cli.py <args>`` with runs and the MLflow database under ``store`` (``extra_args`` come last, so they win)."""
    command = [sys.executable, "cli.py", *args, *store_args(store), *(extra_args or [])]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def store_args(store: Path) -> list[str]:
    return [
        "--trainer.default_root_dir", str(store / "runs"),
        "--trainer.logger.init_args.tracking_uri", f"sqlite:///{store / 'mlflow.db'}",
    ]  # fmt: skip


def only_run(store: Path) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    assert len(runs) == 1, f"expected one MLflow run, found {len(runs)}"
    return runs[0]


def run_folder(store: Path) -> Path:
    """The run folder of the one run under ``store``: ``runs/<experiment id>/<run id>``."""
    run = only_run(store)
    return store / "runs" / run.info.experiment_id / run.info.run_id


def fitted_store(folder: Path, *args: str) -> Path:
    """``folder`` after ``cli.py fit <args>`` has run to the end in it (for module-scoped fixtures)."""
    result = run_cli("fit", *args, store=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder
