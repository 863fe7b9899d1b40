"""Two DDP processes on CPU: replicas stay identical, ranks collect different data, rank 0 logs."""

from __future__ import annotations

import json
from pathlib import Path

from cli_runner import ROOT, TINY, TINY_MBPO, only_run, run_cli


def test_two_process_ddp_keeps_replicas_identical(store: Path) -> None:
    probe = store / "probe"
    probe.mkdir()
    result = run_cli(
        "fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO,
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.callbacks+=ddp_probe.ReplicaDigest",
        store=store,
        extra_env={"NMBRL_PROBE_DIR": str(probe), "PYTHONPATH": str(ROOT / "tests" / "e2e")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    # Agent and world model end with the same parameters on both ranks ...
    assert rank0["agent"] == rank1["agent"]
    assert rank0["world_model"] == rank1["world_model"]
    # ... although each rank stepped its own, differently seeded environment.
    assert rank0["env_steps"] == rank1["env_steps"] == 400
    assert rank0["first_observations"] != rank1["first_observations"]
    # Only rank 0 wrote to MLflow: one run, with the agent's metrics.
    run = only_run(store)
    assert "train/critic_loss" in run.data.metrics and "model/holdout_mse" in run.data.metrics
