"""MLflow stores shared by several runs at once."""

from __future__ import annotations

from pathlib import Path

from together import run_together

ROOT = Path(__file__).resolve().parents[1]

# Each child opens the store as a run's logger does.
OPEN_STORE = """
logger = EnvStepMLFlowLogger(experiment_name="race", tracking_uri=sys.argv[2])
logger.experiment
print(logger.experiment_id, logger.run_id, flush=True)
"""


def test_runs_started_together_on_a_fresh_sqlite_store_all_start(tmp_path):
    # Two runs on a fresh store used to fail in MLflow's schema migration ("duplicate column name").
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    outputs = run_together("from nmbrl.tracking import EnvStepMLFlowLogger", OPEN_STORE, [uri], tmp_path / "go", cwd=ROOT)
    experiments = {out.split()[0] for out in outputs}
    runs = {out.split()[1] for out in outputs}
    assert len(experiments) == 1  # one "race" experiment, created once
    assert len(runs) == 3
