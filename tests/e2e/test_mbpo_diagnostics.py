"""benchmarks/mbpo_diagnostics.py on a real checkpoint: a tiny MBPO Hopper-v5 run, as issue 25's run but short."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli_runner import ROOT, TINY, TINY_MBPO, fitted_store, run_folder


def test_the_diagnostics_of_a_correct_run_pass_every_check_of_the_algorithm(tmp_path: Path) -> None:
    store = fitted_store(tmp_path, "--config", "configs/mbpo_hopper.yaml", *TINY, *TINY_MBPO)
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
    # What any run of the shipped algorithm must pass, however short (the model's accuracy and the
    # entropy need training that a tiny run does not have).
    for check in (
        "termination rule (real buffer)",
        "termination rule (live, float64)",
        "rollout schedule [20, 150, 1, 15]",
        "real_ratio 0.05",
        "model buffer retention",
        "first 200 actions",
        "first SAC update, first model training",
    ):
        assert rows.get(check) == "yes", f"{check}: {rows.get(check)!r}\n{result.stdout}"
    assert {"value estimates", "imagined against real data", "one-step error per member (* elite)", "target entropy"} <= set(rows)
