"""Two DDP processes on CPU: replicas stay identical, ranks collect different data, rank 0 logs, a signal stops both."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from cli_runner import ROOT, TINY, TINY_MBPO, only_run, run_cli
from lifecycle_runner import checkpoints, group_alive, load, start_cli, wait_for

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


@pytest.mark.parametrize("compile", ["false", "true"], ids=["eager", "compiled"])
def test_two_process_ddp_keeps_replicas_identical(store: Path, compile: str) -> None:
    # Compiled too, as configs/mbpo.yaml runs it: each rank compiles its own update, and the
    # gradients of the compiled backward must still be averaged across ranks.
    probe = store / "probe"
    probe.mkdir()
    result = run_cli(
        "fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, "--model.compile", compile,
        *DDP, "--trainer.callbacks+=ddp_probe.ReplicaDigest",
        store=store,
        extra_env={"NMBRL_PROBE_DIR": str(probe), "PYTHONPATH": str(ROOT / "tests" / "e2e")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # No warnings from every rank that the user can do nothing about (the gradient strides of a
    # size-1 dimension, Lightning's use of a deprecated all_gather).
    assert "Grad strides" not in result.stderr and "all_gather is deprecated" not in result.stderr, result.stderr[-3000:]
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


@pytest.mark.parametrize(
    "signum, whole_group, status",
    [
        (signal.SIGTERM, False, 143),  # `kill <pid>`: rank 0 alone gets it
        (signal.SIGINT, False, 130),  # rank 0 alone: the others learn of it only from rank 0
        (signal.SIGINT, True, 130),  # Ctrl+C in a terminal: every rank gets it, each at its own point
    ],
    ids=["sigterm-to-rank-0", "sigint-to-rank-0", "ctrl-c-to-every-rank"],
)
def test_a_signal_stops_every_rank_after_the_same_batch_with_a_final_checkpoint(
    store: Path, signum: signal.Signals, whole_group: bool, status: int
) -> None:
    log = store / "log.txt"
    process = start_cli("fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, *DDP, "--trainer.max_epochs", "100",
                        store=store, log=log, own_group=True)  # fmt: skip
    try:
        wait_for(lambda: "epoch 0:" in log.read_text(), timeout=300, process=process, log=log)
        if whole_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        # A rank that stopped alone would leave the other waiting for it forever.
        assert process.wait(timeout=120) == status, log.read_text()[-3000:]
        output = log.read_text()
        stopped = re.search(r"Stopped by (\S+) at (\d+) env steps", output)
        assert stopped and stopped[1] == {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl+C"}[signum], output[-3000:]
        assert load(checkpoints(store)[0])["nmbrl"]["env_steps"] == int(stopped[2])
        assert only_run(store).info.status == "KILLED"
        time.sleep(0.5)  # the other rank's own exit, after rank 0's
        assert not group_alive(process.pid), "a rank is still running"
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
