"""benchmarks/gradient_audit.py on a real ``cli.py fit`` run, with the compiled update, as its docstring runs it."""

import subprocess
import sys
from pathlib import Path

from cli_runner import ROOT, TINY, TINY_MBPO, store_args


def audit(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "benchmarks/gradient_audit.py", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_compiled_run_is_audited_epoch_by_epoch_at_the_float32_floor(tmp_path):
    csv = tmp_path / "audit.csv"
    result = audit(
        "--every", "10", "--csv", str(csv), "--",
        "fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, *store_args(tmp_path), "--model.compile", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[2:]] == ["| 0", "| 1", "| all"]
    assert rows[-1].endswith("| yes |")
    assert audited_at_the_floor(csv) == 20  # 2 epochs of 100 env steps, one update each: every 10th


def audited_at_the_floor(csv: Path) -> int:
    """Check each audited update of ``csv`` against the float32 floor; how many there are."""
    audited = csv.read_text().splitlines()[1:]
    for line in audited:
        run_gradient, eager_gradient, run_step, eager_step = map(float, line.split(",")[2:6])
        assert run_gradient < 1e-4 and run_step < 10 * eager_step + 1e-4, line
    return len(audited)


def test_a_bad_config_stops_with_the_cli_s_own_error(tmp_path):
    result = audit("--", "fit", "--config", "configs/mbpo.yaml", "--data.batch_size", "0", *store_args(tmp_path))
    assert result.returncode == 2
    assert "batch_size" in result.stderr and "no update was audited" not in result.stderr
