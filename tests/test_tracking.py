"""MLflow stores shared by several runs at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each child gets ready (imports done), waits for the go file, then opens the store as a run's logger does.
CHILD = """
import sys, time
from pathlib import Path
from nmbrl.tracking import EnvStepMLFlowLogger
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
logger = EnvStepMLFlowLogger(experiment_name="race", tracking_uri=sys.argv[1])
logger.experiment
print(logger.experiment_id, logger.run_id, flush=True)
"""


def test_runs_started_together_on_a_fresh_sqlite_store_all_start(tmp_path):
    # Two runs on a fresh store used to fail in MLflow's schema migration ("duplicate column name").
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    go = tmp_path / "go"
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, uri, str(go)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, outcomes):
        assert child.returncode == 0, err[-2000:]
    experiments = {out.split()[0] for out, _ in outcomes}
    runs = {out.split()[1] for out, _ in outcomes}
    assert len(experiments) == 1  # one "race" experiment, created once
    assert len(runs) == 3
