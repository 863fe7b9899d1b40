"""benchmarks/gradient_audit.py on a real ``cli.py fit`` run, with the compiled update, as its docstring runs it."""

import subprocess
import sys
from pathlib import Path

from cli_runner import ROOT, TINY, TINY_MBPO, store_args


def audit(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "benchmarks/gradient_audit.py", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_compiled_run_is_audited_epoch_by_epoch_and_place_by_place_at_the_float32_floor(tmp_path):
    csv = tmp_path / "audit.csv"
    result = audit(
        "--every", "10", "--csv", str(csv), "--",
        "fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, *store_args(tmp_path), "--model.compile", "true",
        "--data.updates_per_step", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[2:]] == ["| 0", "| 1", "| all", "| place 0", "| place 1"]
    assert all(row.endswith("| yes |") for row in rows[2:])
    assert [row.split(" | ")[1] for row in rows[-2:]] == ["20", "20"]  # the two updates of an env step, in turn
    assert audited_at_the_floor(csv) == 40  # 2 epochs of 100 env steps, two updates each: one in 10


def audited_at_the_floor(csv: Path) -> int:
    """Check the audited updates of ``csv`` against the float32 floor; how many there are.

    A branch that float rounding decides (which critic is the smaller) puts a few single updates of
    either computation far above the other (9 and 21 of 4750 in a whole default run), so the checks are
    on the median and on how many: a bug (a stale weight, a gradient on the wrong weight) is far off on
    every update.
    """
    rows = [list(map(float, line.split(",")[2:6])) for line in csv.read_text().splitlines()[1:]]
    run_gradient, eager_gradient, run_step, eager_step = (sorted(column) for column in zip(*rows))
    middle = len(rows) // 2
    assert run_gradient[middle] < 2 * eager_gradient[middle] + 1e-6 and run_step[middle] < 2 * eager_step[middle] + 1e-6
    assert sum(r[2] > 10 * r[3] for r in rows) <= len(rows) // 10, rows
    return len(rows)


def test_a_bad_config_stops_with_the_cli_s_own_error(tmp_path):
    result = audit("--", "fit", "--config", "configs/mbpo.yaml", "--data.batch_size", "0", *store_args(tmp_path))
    assert result.returncode == 2
    assert "batch_size" in result.stderr and "no update was audited" not in result.stderr
