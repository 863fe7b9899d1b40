"""Pieces of the run lifecycle used by every run: RNG states, the eval plot, videos."""

from __future__ import annotations

import random
from pathlib import Path

import imageio.v2 as imageio
import mlflow
import numpy as np
import pytest
import torch

from callbacks.evaluation import returns_table
from callbacks.run_lifecycle import rng_states, set_rng_states
from nmbrl.errors import ConfigError
from nmbrl.plots import eval_returns, main as plots_main
from nmbrl.video import write_video


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = draws()
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


def test_eval_plot_of_a_finished_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri()))
    for step, value in ((2000, 10.0), (1000, 5.0)):
        client.log_metric(run.info.run_id, "eval/return_mean", value, step=step)
    assert eval_returns(client, run.info.run_id) == [(1000, 5.0), (2000, 10.0)]
    out = tmp_path / "curve.png"
    plots_main(["--run-id", run.info.run_id, "--tracking-uri", uri, "--out", str(out), "--log-artifact"])
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["curve.png"]


def test_eval_plot_of_a_run_never_evaluated_is_an_error(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("e"))
    with pytest.raises(SystemExit, match="never evaluated"):
        plots_main(["--run-id", run.info.run_id, "--tracking-uri", uri, "--out", str(tmp_path / "c.png")])


@pytest.mark.parametrize("suffix", ["mp4", "gif"])
def test_videos_are_written_and_readable(tmp_path: Path, suffix: str) -> None:
    frames = torch.randint(0, 255, (12, 48, 64, 3), dtype=torch.uint8)
    path = write_video(frames, tmp_path / f"episode.{suffix}", fps=10)
    read = imageio.mimread(path)
    assert len(read) == 12 and read[0].shape[:2] == (48, 64)


def test_returns_table_lists_each_episode_and_the_mean() -> None:
    table = returns_table([(10.0, 100, 7), (20.0, 200, 8)])
    assert "| 1 | 20.00 | 200 | 8 |" in table and "| mean ± std | 15.00 ± 5.00 | | |" in table
