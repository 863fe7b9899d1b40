"""The benchmarks' reading of runs: when one first reached the target return, the curves, the learning-curve table."""

import sys
from pathlib import Path

import torch

from nmbrl.random_streams import RandomStream

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from concurrent_vs_sync import Result, first_reaching, mean_return, seed_interval  # noqa: E402
from concurrent_vs_sync import table as ablation_table  # noqa: E402
from learning_curves import create_store, curves, run_one, table  # noqa: E402
from main_generators import MainGenerators  # noqa: E402
from together import run_together  # noqa: E402


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


def test_the_area_under_an_eval_curve_is_its_mean_return_by_the_trapezoid_rule():
    assert mean_return([(4000, 100.0), (1000, 0.0), (2000, 100.0)]) == (50.0 * 1000 + 100.0 * 2000) / 3000
    assert mean_return([(1000, 42.0)]) == 42.0


def test_the_ablation_reads_finished_runs_only_and_names_the_others(tmp_path):
    import mlflow
    from concurrent_vs_sync import results

    create_store(tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("benchmark").experiment_id
    for name, status in [("sync-seed0", "FINISHED"), ("lockstep-seed0", "RUNNING"), ("lockstep-seed1", "KILLED")]:
        run_id = client.create_run(experiment, run_name=name).info.run_id
        for step, value in [(3000, 500.0), (1000, 100.0), (2000, 300.0), (4000, 700.0)]:  # out of step order
            client.log_metric(run_id, "eval/return_mean", value, step=step)
        if name == "sync-seed0":  # as a concurrent run logs its pacing: a running ratio, and waits
            for step, ratio, wait in [(1500, 4.8, 0.2), (2000, 4.9, 0.0)]:
                client.log_metric(run_id, "pacing/update_ratio", ratio, step=step)
                client.log_metric(run_id, "agent/wait_fraction", wait, step=step)
        if status != "RUNNING":
            client.set_terminated(run_id, status)

    unfinished = []
    found = results(tmp_path, 750.0, unfinished)
    assert list(found) == ["sync"] and found["sync"][0].final_return == 700.0
    assert found["sync"][0].last_returns == 500.0  # (300 + 500 + 700) / 3: the last three by env steps
    assert found["sync"][0].update_ratio == 4.9 and found["sync"][0].wait_fraction == 0.1  # the last ratio, the mean wait
    assert unfinished == ["lockstep seed 0 (RUNNING, evaluated to 4000 env steps)", "lockstep seed 1 (KILLED, evaluated to 4000 env steps)"]


def test_the_ablation_table_compares_each_variant_with_sync_on_the_seeds_both_ran():
    nan = float("nan")
    found = {
        "sync": {
            0: Result(None, None, 800.0, 60.0, 700.0, nan, 0.0, last_returns=750.0),
            1: Result(30.0, 5000, 600.0, 60.0, 500.0, nan, 0.0, last_returns=550.0),
        },
        "lockstep": {0: Result(None, None, 780.0, 66.0, 665.0, 0.0, 0.0, 4.996, 0.25, last_returns=720.0)},
    }
    rows = ablation_table(found, 750.0).splitlines()
    assert rows[0] == "| | sync | lockstep |"
    assert "| final return / sync's (same seeds) | 1.000 (n=2) | 0.975 (n=1) |" in rows  # 780 / 800, seed 0 only
    assert "| area / sync's (same seeds) | 1.000 (n=2) | 0.950 (n=1) |" in rows
    assert "| mean of the last 3 evaluations | 650.0 ± 100.0 | 720.0 ± 0.0 |" in rows
    assert "| last 3 / sync's (same seeds) | 1.000 (n=2) | 0.960 (n=1) |" in rows  # 720 / 750
    assert "| collector's policy age (agent updates) | – | 0.00 ± 0.00 |" in rows  # sync has no collector
    assert "| final eval return per seed | 800.0, 600.0 | 780.0 |" in rows
    assert "| updates per env step at the end (pacing) | – | 4.996 ± 0.000 |" in rows
    assert "| agent's time waiting for env steps | – | 0.250 ± 0.000 |" in rows


def test_the_projection_overlaps_retraining_and_collection_only_where_the_cores_allow():
    from concurrency_projection import Costs, estimate

    costs = Costs(explore=10, collection=60, loop=(1200, 800), retrain=(900, 600), rollouts=(60, 40), evaluation=(30, 20))
    roomy = estimate(costs, 8)
    assert roomy.sync == 10 + 800 + 600 + 40 + 20  # one process, 2 threads: the phases add up
    assert roomy.concurrent == 800 - 60 + 40 + 20  # the agent's own work; collector and world model beside it
    assert roomy.lockstep == 10 + 800 + 900 + 40 + 20  # sync's order, the 1-thread world model waited for
    # On 2 cores the agent keeps 1 thread while each retraining runs: 900 s at half its 2-thread pace.
    two = estimate(costs, 2)
    agent_1, agent_2 = 1200 - 60 + 60 + 30, 800 - 60 + 40 + 20
    assert abs(two.concurrent - (agent_2 + 900 * (1 - agent_2 / agent_1))) < 1e-9
    assert estimate(costs, 2).sync == estimate(costs, 16).sync  # more cores do not help sync mode


def test_the_projection_rescales_retraining_to_another_epoch_count():
    from concurrency_projection import Costs

    def record(threads, retrain_s):
        phases = {"random exploration": 5, "SAC loop (with collection)": 100, "world-model retraining": retrain_s}
        phases |= {"branched rollouts": 10, "evaluation": 1}
        return {"config": "c.yaml", "cli_args": [], "threads": threads, "phases_s": phases, "collection_s": 7, "retrain_epochs": 40}

    one, two = record(1, 800.0), record(2, 600.0)
    assert Costs.of(one, two).retrain == (800.0, 600.0)
    assert Costs.of(one, two, retrain_epochs=10).retrain == (200.0, 150.0)  # linear in the epochs
    assert Costs.of(one, two, retrain_epochs=10).loop == (100, 100)  # nothing else changes


def test_the_mujoco_evidence_table_puts_each_run_the_sac_mean_and_the_paper_side_by_side():
    from mujoco_evidence import Curve, returns_table

    mbpo = [Curve("mbpo seed 0", "a", {1000: (50.0, 0), 2000: (300.0, 0)})]
    sac = [Curve("sac seed 0", "b", {1000: (40.0, 0), 2000: (100.0, 0)}), Curve("sac seed 1", "c", {2000: (200.0, 0)})]
    rows = returns_table(mbpo, sac, {2000: 524.0}, every=1000).splitlines()
    assert rows[0] == "| env steps | mbpo seed 0 | sac seed 0 | sac seed 1 | SAC mean | paper MBPO |"
    assert rows[2:] == ["| 1000 | 50.0 | 40.0 |  | 40.0 |  |", "| 2000 | 300.0 | 100.0 | 200.0 | 150.0 | 524 |"]


def test_each_sitting_of_a_resumed_run_gives_its_evaluations_and_its_peak_memory(tmp_path):
    import os

    from mujoco_evidence import sittings

    first, second, third = (tmp_path / f"mbpo_s0{suffix}.log" for suffix in ("", "_resume1", "_resume2"))
    first.write_text("epoch 0: env steps 6000, eval return 1.0\nepoch 1: env steps 7000, eval return 1.5\n\tMaximum resident set size (kbytes): 2097152\n")
    second.write_text("killed before its first evaluation\n")
    third.write_text("epoch 9: env steps 15000, eval return 2.0\n")  # still running: no time -v summary yet
    os.utime(first, (1, 1))  # oldest first
    os.utime(second, (2, 2))
    found = sittings(str(tmp_path / "mbpo_s0*.log"))
    assert [(s.log.name, s.first_env_steps, s.last_env_steps, s.peak_rss_gib) for s in found] == [
        ("mbpo_s0.log", 6000, 7000, 2.0),
        ("mbpo_s0_resume1.log", None, None, None),
        ("mbpo_s0_resume2.log", 15000, 15000, None),
    ]
    assert [s.describe() for s in found] == [
        "mbpo_s0.log: evaluations from 6000 to 7000 env steps, peak RSS 2.00 GiB",
        "mbpo_s0_resume1.log: no evaluation, did not finish: no peak RSS",
        "mbpo_s0_resume2.log: evaluations from 15000 to 15000 env steps, did not finish: no peak RSS",
    ]


def diagnostics_run(metrics=None, terminated=None, **data):
    """A ``mbpo_diagnostics.Run`` of a made-up Hopper run: 20 real transitions and the given metrics."""
    import torch
    from mbpo_diagnostics import Run

    from nmbrl.data.buffers import FILLED_ROWS

    observation = torch.zeros(20, 11)
    observation[:, 0] = 1.25  # standing: healthy
    next_observation = observation.clone()
    next_observation[-1, 0] = 0.5  # the last one falls
    rows = {
        "observation": observation,
        "action": torch.rand(20, 3) * 2 - 1,
        "next": {
            "observation": next_observation,
            "reward": torch.ones(20, 1),
            "done": torch.zeros(20, 1, dtype=torch.bool),
            "terminated": terminated if terminated is not None else (next_observation[:, :1] < 0.7),
        },
    }
    checkpoint = {
        "nmbrl": {"env": "Hopper-v5", "run_id": "x", "tracking_uri": "sqlite://"},
        "RLDataModule": {"real_buffer": {"_storage": {FILLED_ROWS: rows, "_len": 20}}},
        "hyper_parameters": {"target_entropy": -1.0},
    }
    config = {
        "data": {"random_steps": 5000, "epoch_length": 1000, "real_ratio": 0.05, "batch_size": 256, **data},
        "rollouts": {"class_path": "callbacks.BranchedRollouts", "init_args": {"schedule": [20, 150, 1, 15], "batch_size": 100_000, "every": 250}},
    }
    return Run(checkpoint, config, metrics or {})


def test_the_diagnostics_find_a_termination_flag_the_rule_would_not_give():
    import torch
    from mbpo_diagnostics import check_termination_on_real_data

    assert check_termination_on_real_data(diagnostics_run()).ok is True
    flags = torch.zeros(20, 1, dtype=torch.bool)  # the fall at the end is not flagged
    finding = check_termination_on_real_data(diagnostics_run(terminated=flags))
    assert finding.ok is False and finding.measured.startswith("1 of 20")


def test_the_paper_s_horizon_counts_epochs_from_the_end_of_the_random_steps():
    from mbpo_diagnostics import check_rollout_schedule, paper_horizon

    assert [paper_horizon(s, 5000, 1000, [20, 150, 1, 15]) for s in (5000, 34_999, 35_000, 155_000)] == [1, 1, 2, 15]
    right = {"rollout/horizon": [(30_000, 1.0), (35_000, 1.0), (35_250, 2.0)]}  # 35,000: the epoch before is accepted
    assert check_rollout_schedule(diagnostics_run(right)).ok is True
    late = {"rollout/horizon": [(30_000, 1.0), (36_250, 1.0)]}  # the paper's horizon at 36,250 is 2
    assert check_rollout_schedule(diagnostics_run(late)).ok is False
    from_zero = {"rollout/horizon": [(25_250, 2.0)]}  # epochs counted from env step 0
    assert check_rollout_schedule(diagnostics_run(from_zero)).ok is False


def test_the_diagnostics_measure_the_real_share_of_the_batches_the_data_module_draws():
    from mbpo_diagnostics import check_real_ratio

    assert check_real_ratio(diagnostics_run()).ok is True
    assert "share 0.0" in check_real_ratio(diagnostics_run()).measured
    # Told the run used 0.5 while the batches are drawn at 0.5: still per-sample, still right.
    assert check_real_ratio(diagnostics_run(real_ratio=0.5)).ok is True


def test_a_model_buffer_that_shrank_or_outgrew_mbpo_s_size_fails_its_check():
    from mbpo_diagnostics import check_model_buffer

    horizons = [(5000, 1.0), (5250, 1.0), (5500, 1.0)]
    kept = {"rollout/horizon": horizons, "rollout/model_buffer_size": [(5000, 100_000.0), (5250, 200_000.0), (5500, 300_000.0)]}
    assert check_model_buffer(diagnostics_run(kept)).ok is True
    wiped = {"rollout/horizon": horizons, "rollout/model_buffer_size": [(5000, 100_000.0), (5250, 100_000.0), (5500, 50_000.0)]}
    assert check_model_buffer(diagnostics_run(wiped)).ok is False
    grown = {"rollout/horizon": horizons, "rollout/model_buffer_size": [(5000, 100_000.0), (5250, 500_000.0)]}
    assert check_model_buffer(diagnostics_run(grown)).ok is False


def test_a_pipe_inside_a_finding_cannot_split_its_table_cell():
    from mbpo_diagnostics import Finding, table

    row = table([Finding("reward error", "0.007 (mean |error|)", "small", True)]).splitlines()[-1]
    assert row == "| reward error | 0.007 (mean \\|error\\|) | small | yes |"
    assert row.replace("\\|", "").count("|") == 5  # four cells


def test_the_ratio_to_sync_comes_with_a_seed_bootstrap_interval_from_three_seeds():
    nan = float("nan")
    sync = {seed: Result(None, None, final, 60.0, final / 2, nan, 0.0) for seed, final in enumerate([800.0, 600.0, 700.0, 500.0])}
    lockstep = {seed: Result(None, None, 0.9 * r.final_return, 60.0, r.area * ratio, 0.0, 0.0)
                for (seed, r), ratio in zip(sync.items(), [0.6, 1.3, 0.8, 1.2])}
    rows = ablation_table({"sync": sync, "lockstep": lockstep}, 750.0).splitlines()
    # Every seed at 0.9x: every draw of seeds gives 0.9.
    assert "| final return / sync's (same seeds) | 1.000 (n=4; 90% 1.00-1.00) | 0.900 (n=4; 90% 0.90-0.90) |" in rows
    area_row = next(row for row in rows if row.startswith("| area / sync's"))
    low, high = seed_interval([400 * 0.6, 300 * 1.3, 350 * 0.8, 250 * 1.2], [400.0, 300.0, 350.0, 250.0])
    assert f"(n=4; 90% {low:.2f}-{high:.2f})" in area_row
    # Spread per-seed ratios: the interval holds the ratio of the sums and lies within the per-seed extremes.
    point = (400 * 0.6 + 300 * 1.3 + 350 * 0.8 + 250 * 1.2) / 1300
    assert 0.6 < low < point < high < 1.3


def test_the_main_generators_probe_puts_a_stream_s_draws_on_the_main_generators(monkeypatch):
    monkeypatch.setattr(RandomStream, "active", RandomStream.active)  # the probe's patch is undone after the test
    stream = RandomStream(123)
    torch.manual_seed(0)
    main_draw = torch.rand(1)
    torch.manual_seed(0)
    with stream.active():
        own_draw = torch.rand(1)
    assert not torch.equal(own_draw, main_draw)  # the control: as shipped, the stream draws its own numbers

    MainGenerators()
    torch.manual_seed(0)
    with stream.active():
        probe_draw = torch.rand(1)
    assert torch.equal(probe_draw, main_draw)


def test_benchmarks_started_together_on_one_fresh_out_folder_share_one_store(tmp_path):
    # Two benchmark processes on one fresh --out raced to create MLflow's tables and the experiment.
    import mlflow

    out = tmp_path / "out"
    out.mkdir()
    setup = f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\nfrom learning_curves import create_store"
    run_together(setup, "create_store(Path(sys.argv[2]))", [str(out)], tmp_path / "go")
    experiments = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_experiments()
    assert [e.name for e in experiments if e.name == "benchmark"] == ["benchmark"]
