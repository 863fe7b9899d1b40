"""The benchmarks' reading of runs: when one first reached the target return, the curves, the learning-curve table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from concurrent_vs_sync import first_reaching  # noqa: E402
from learning_curves import create_store, curves, run_one, table  # noqa: E402


def test_time_and_steps_of_the_first_evaluation_at_or_above_the_target():
    start = 1_000_000
    history = [(start + 90_000, 3000, 760.0), (start + 30_000, 1000, 100.0), (start + 60_000, 2000, 750.0)]
    assert first_reaching(history, 750.0, start) == (60.0, 2000)


def test_a_run_gets_the_threads_asked_for_or_else_the_cli_s_auto(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    echo = [sys.executable, "-c", "import os, sys; print(sys.argv[1:], os.environ.get('OMP_NUM_THREADS'))"]
    run_one(echo, tmp_path / "one.log", 1)
    run_one(echo, tmp_path / "auto.log", None)
    assert (tmp_path / "one.log").read_text().strip() == "['--torch_threads', '1'] 1"
    assert (tmp_path / "auto.log").read_text().strip() == "[] None"  # concurrent mode's agent leaves its roles their cores


def test_a_run_that_never_reaches_the_target():
    assert first_reaching([(5, 1000, 10.0)], 750.0, 0) == (None, None)


def test_the_table_gives_each_seed_s_last_return_and_the_mean_of_the_last_three():
    data = {
        "mbpo": {1: [(1000, 10.0), (2000, 20.0), (3000, 30.0), (4000, 40.0)], 0: [(1000, 0.0), (2000, 50.0), (3000, 60.0), (4000, 70.0)]},
        "sac": {0: [(1000, 5.0), (2000, 7.0)]},
    }
    rows = table(data, {"mbpo": [60.0, 120.0]}).splitlines()

    assert rows[0] == "| env steps | mbpo (n=2) | sac (n=1) |"
    assert "| 4000 | 55.0 ± 15.0 |  |" in rows
    assert "| last evaluation, per seed | 70.0 / 40.0 | 7.0 |" in rows  # in seed order
    # mbpo: seed 0 (50 + 60 + 70) / 3 = 60, seed 1 30; sac: its two evaluations
    assert "| mean of each seed's last 3 evaluations | 45.0 ± 15.0 | 6.0 ± 0.0 |" in rows
    assert rows[-1] == "| wall-clock per run | 1.5 min |  |"


def test_curves_read_each_run_s_evaluations_and_the_actor_s_beside_an_averaged_policy(tmp_path):
    import mlflow

    create_store(tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("benchmark").experiment_id
    logged = {
        "mbpo-seed3": {"eval/return_mean": [(1000, 10.0), (2000, 30.0)], "eval/actor_return_mean": [(1000, 12.0), (2000, 25.0)]},
        "sac-seed0": {"eval/return_mean": [(2000, 5.0), (1000, 4.0)]},
    }
    for name, metrics in logged.items():
        run_id = client.create_run(experiment, run_name=name).info.run_id
        for key, points in metrics.items():
            for step, value in points:
                client.log_metric(run_id, key, value, step=step)

    assert curves(tmp_path) == {
        "mbpo": {3: [(1000, 10.0), (2000, 30.0)]},
        "mbpo-actor": {3: [(1000, 12.0), (2000, 25.0)]},
        "sac": {0: [(1000, 4.0), (2000, 5.0)]},
    }
