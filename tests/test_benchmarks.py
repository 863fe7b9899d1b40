"""The benchmark's reading of a run: when it first reached the target return."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from concurrent_vs_sync import first_reaching  # noqa: E402


def test_time_and_steps_of_the_first_evaluation_at_or_above_the_target():
    start = 1_000_000
    history = [(start + 90_000, 3000, 760.0), (start + 30_000, 1000, 100.0), (start + 60_000, 2000, 750.0)]
    assert first_reaching(history, 750.0, start) == (60.0, 2000)


def test_a_run_that_never_reaches_the_target():
    assert first_reaching([(5, 1000, 10.0)], 750.0, 0) == (None, None)
