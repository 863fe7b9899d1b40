"""benchmarks/update_rates.py: the GPU figures' script, checked on the CPU (the CUDA graphs row needs a GPU: tests/e2e/test_gpu.py)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("update_rates", ROOT / "benchmarks" / "update_rates.py")
update_rates = sys.modules["update_rates"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_rates)

SMALL = ["--model.hidden_sizes", "[16, 16]", "--data.batch_size", "32"]


def test_the_table_projects_the_hours_of_each_rate_and_compares_it_with_eager():
    lines = update_rates.table({"eager": 100.0, "compiled": 250.0}, updates_per_step=20, env_steps=125_000).splitlines()

    assert "(2500000 updates)" in lines[0]
    assert lines[2] == "| eager | 100.0 | 6.94 | 1.00x |"  # 2.5M updates at 100/s: 25000 s
    assert lines[3] == "| compiled | 250.0 | 2.78 | 2.50x |"


def test_each_way_of_updating_is_timed_on_the_cpu_and_the_eager_one_is_eager(monkeypatch, capsys):
    threads = torch.get_num_threads()
    timed = []
    real_prepared, real_per_second = update_rates.prepared, update_rates.per_second

    def prepared(agent, optimizer, way):
        real_prepared(agent, optimizer, way)
        timed.append((way, agent.compiled, agent.gradients_in_graph))

    monkeypatch.setattr(update_rates, "prepared", prepared)
    monkeypatch.setattr(update_rates, "per_second", lambda step, updates: real_per_second(step, updates, warmup=2))
    try:
        update_rates.main(["--config", str(ROOT / "configs" / "mbpo.yaml"), "--device", "cpu", "--updates", "6", "--cli-args", *SMALL])
    finally:
        torch.set_num_threads(threads)

    # Eager first, then the agent's own compiled update: in one CPU process, its gradients in the graph.
    assert timed == [("eager", False, False), ("agent", True, True)]
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| eager", "| compiled (model.compile)"]
    assert all(float(row.split(" | ")[1]) > 0 for row in rows)
    assert "hidden [16, 16], batch 32" in out and "5 updates an env step" in out


@pytest.mark.parametrize(
    "argv, message",
    [(["--device", "cuda:0"], "no CUDA device"), (["--env-steps", "0", "--device", "cpu"], "at least 1")],
)
def test_bad_arguments_stop_before_anything_is_built(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        update_rates.parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_gpu_checks_stop_at_once_without_a_cuda_device(tmp_path):
    environment = {**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_checks.sh")], env=environment, capture_output=True, text=True, timeout=300)

    assert result.returncode == 1
    assert "no CUDA device" in (tmp_path / "device.txt").read_text()
    assert not (tmp_path / "test_gpu.log").exists()  # nothing else ran
