"""MBPO must learn: on InvertedPendulum-v5 it clearly beats a random policy within 1500 env steps."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from cli_runner import only_run, run_cli
from torchrl.envs.utils import RandomPolicy

from nmbrl.envs import make_env
from nmbrl.evaluation import evaluate_policy


def random_policy_return(episodes: int = 10) -> float:
    env = make_env("InvertedPendulum-v5", seed=123, num_envs=episodes)
    return float(evaluate_policy(env, RandomPolicy(env.action_spec), max_steps=1000).mean())


@pytest.mark.slow
def test_mbpo_beats_random_policy_on_inverted_pendulum(store: Path) -> None:
    result = run_cli(
        "fit", "--config", "configs/mbpo_inverted_pendulum.yaml",
        "--trainer.max_epochs", "4",  # 500 random + 4 * 250 = 1500 env steps
        "--data.updates_per_step", "5",
        "--rollouts.batch_size", "10000",
        "--evaluation.episodes", "5",
        store=store,
        timeout=1800,  # about 3 minutes on an idle 2-core machine; generous for a loaded one
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(store)
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    returns = [m.value for m in client.get_metric_history(run.info.run_id, "eval/return_mean")]
    baseline = random_policy_return()
    assert max(returns[-2:]) > max(5 * baseline, 40.0), f"eval returns {returns}, random policy {baseline:.1f}"
    assert torch.isfinite(torch.tensor(returns)).all()
