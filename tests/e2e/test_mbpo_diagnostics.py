"""benchmarks/mbpo_diagnostics.py on real checkpoints: tiny MBPO runs of Hopper-v5 (issue 25's run, but
short) and of the default job's dm_control task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli_runner import ROOT, TINY, TINY_MBPO, fitted_store, run_folder


def diagnostics(tmp_path: Path, *fit_args: str) -> tuple[dict[str, str], str]:
    """The diagnostics' table for a tiny fit: {check: ok column}, and the whole output."""
    store = fitted_store(tmp_path, *fit_args, *TINY, *TINY_MBPO)
    checkpoint = run_folder(store) / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [sys.executable, "benchmarks/mbpo_diagnostics.py", str(checkpoint), "--episodes", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        line.split(" | ")[0].lstrip("| "): line.rstrip(" |").rsplit(" | ", 1)[-1]
        for line in result.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| check") and not line.startswith("| ---")
    }
    return rows, result.stdout


def assert_passed(rows: dict[str, str], output: str, checks: tuple[str, ...]) -> None:
    """Each of ``checks`` is in the table with ``yes`` in its ok column."""
    for check in checks:
        assert rows.get(check) == "yes", f"{check}: {rows.get(check)!r}\n{output}"


def test_the_diagnostics_of_a_correct_run_pass_every_check_of_the_algorithm(tmp_path: Path) -> None:
    rows, output = diagnostics(tmp_path, "--config", "configs/mbpo_hopper.yaml")
    # What any run of the shipped algorithm must pass, however short (the model's accuracy and the
    # entropy need training that a tiny run does not have).
    assert_passed(rows, output, (
        "termination rule (real buffer)",
        "termination rule (live, float64)",
        "rollout schedule [20, 150, 1, 15]",
        "real_ratio 0.05",
        "model buffer retention",
        "first 200 actions",
        "first SAC update, first model training",
    ))  # fmt: skip
    assert {"value estimates", "imagined against real data", "one-step error per member (* elite)", "target entropy"} <= set(rows)


def test_the_diagnostics_run_on_the_default_jobs_dm_control_task(tmp_path: Path) -> None:
    # The default job's task and its `target_entropy: auto`: the live episode steps the run's TorchRL
    # env (dm_control has no gymnasium id), and the target is what SACLoss resolved, minus the action size.
    rows, output = diagnostics(tmp_path, "--config", "configs/mbpo.yaml")
    assert_passed(rows, output, (
        "termination rule (real buffer)",
        "termination rule (live)",
        "rollout schedule [1, 5, 1, 10]",
        "real_ratio 0.25",
        "model buffer retention",
        "first 200 actions",
        "first SAC update, first model training",
    ))  # fmt: skip
    assert "| policy in cartpole-swingup (1 episodes) | return " in output and ", length 1000 |" in output
    assert "| target entropy | target -1; " in output
    assert "forward" not in output  # a displacement along qpos[0] means something for gymnasium's walkers only
