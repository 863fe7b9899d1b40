"""benchmarks/throughput.py: the pieces its projection of a full run rests on."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from nmbrl.data import TRANSITION_KEYS

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
throughput = sys.modules["throughput"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(throughput)


def test_interpolate_is_the_line_through_two_points():
    assert throughput.interpolate({1000: 1.0, 5000: 3.0}, 3000) == 2.0
    assert throughput.interpolate({5000: 3.0, 1000: 1.0}, 9000) == 5.0  # extrapolates; order does not matter


def test_retraining_points_of_the_default_config():
    # configs/mbpo.yaml: 1000 random steps, 19 epochs of 1000 steps, retraining every 250 steps.
    run = SimpleNamespace(
        data=SimpleNamespace(epoch_length=1000, action_repeat=1), world_model_training=SimpleNamespace(every=250), random_steps=1000, max_epochs=19
    )

    points = throughput.retraining_points(run)

    # The first update (env step 1001) retrains, then every multiple of 250 up to the last step,
    # which is collected in the last epoch (index 18) before its updates.
    assert points[:3] == [(1001, 0), (1250, 0), (1500, 0)]
    assert (2000, 0) in points and (2250, 1) in points
    assert points[-1] == (20000, 18)
    assert len(points) == 77


def test_synthetic_transitions_have_the_keys_and_dtypes_of_real_ones():
    data = throughput.synthetic_transitions(7, observation_dim=5, action_dim=2)

    assert set(data.keys(include_nested=True, leaves_only=True)) == set(TRANSITION_KEYS)
    assert data.shape == (7,) and data["action"].shape == (7, 2) and data["next", "observation"].shape == (7, 5)
    assert data["next", "done"].dtype == data["next", "terminated"].dtype == throughput.torch.bool
    assert data["action"].abs().max() <= 1


def test_the_timed_lightning_loop_runs_updates_after_the_buffers_were_filled(tmp_path):
    # measure() sets env_steps to the filled buffer's size before timing the loop last; the loop
    # must still run its updates (it once timed zero batches and divided by zero).
    run = throughput.build_run(str(ROOT / "configs" / "mbpo.yaml"), updates=30, threads=1, extra=["--model.compile", "false"], root=str(tmp_path))
    run.data.env_steps = 10**6  # past the end of every epoch of the config
    rate = throughput.lightning_loop_rate(run, warmup=5)
    assert rate > 0
    assert run.cli.trainer.global_step == 30


def test_the_ratios_are_those_of_the_update_the_loop_runs():
    from dataclasses import replace

    figures = throughput.Figures(
        matmul=16 * 300.0, library_sac=50.0, bare_sac=100.0, compiled_sac=150.0, peer_sac=100.0, sampling=500.0, loop=120.0,
        collect_random=2000.0, collect_policy=500.0, wm_epoch={}, rollout={}, evaluation=3.0, loop_compiled=True,
    )  # fmt: skip

    compiled = throughput.ratios(figures)
    assert compiled["compiled bare update / ceiling"] == 0.5
    assert compiled["in-loop update / compiled bare update"] == 0.8
    assert compiled["compiled / eager bare update"] == 1.5
    assert compiled["in-loop update / SB3 SAC.train"] == 1.2
    eager = throughput.ratios(replace(figures, loop_compiled=False))
    assert eager["bare update / ceiling"] == 100.0 / 300.0
    assert eager["in-loop update / bare update"] == 1.2
    # Timed in alternating rounds, the ratio is the median of the rounds' own, not one of the medians.
    assert throughput.ratios(replace(figures, ceiling_ratio=0.6))["compiled bare update / ceiling"] == 0.6


def test_the_json_record_feeds_the_concurrency_projection(tmp_path):
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from concurrency_projection import Costs, estimate

    run = throughput.build_run(str(ROOT / "configs" / "mbpo.yaml"), updates=10, threads=1, extra=[], root=str(tmp_path))
    records = []
    for threads, speed in ((1, 1.0), (2, 1.5)):  # made-up figures: 2 threads 1.5x as fast at everything
        figures = throughput.Figures(
            matmul=1000.0, library_sac=10.0, bare_sac=20.0, compiled_sac=None, peer_sac=None, sampling=500.0, loop=50.0 * speed,
            collect_random=2000.0, collect_policy=500.0, wm_epoch={1000: 0.1 / speed, 20000: 1.0 / speed},
            rollout={1: 0.5 / speed, 10: 2.0 / speed}, evaluation=3.0 / speed,
        )  # fmt: skip
        args = SimpleNamespace(config="configs/mbpo.yaml", cli_args=[], threads=threads, clock="wall", retrain_epochs=None)
        throughput.write_json(tmp_path / f"t{threads}.json", run, figures, args)
        records.append(json.loads((tmp_path / f"t{threads}.json").read_text()))

    one = records[0]
    assert one["env_steps"] == 20_000 and one["retrainings"] == 77
    assert one["phases_s"]["SAC loop (with collection)"] == 19_000 * 5 / 50.0  # 19 epochs of 1000 steps, 5 updates each
    assert one["collection_s"] == 19_000 / 500.0
    costs = Costs.of(*records)
    assert costs.loop == (19_000 * 5 / 50.0, 19_000 * 5 / 75.0)
    assert estimate(costs, 16).concurrent < estimate(costs, 16).sync


def test_a_config_without_a_world_model_is_refused_with_one_error_line(tmp_path):
    with pytest.raises(SystemExit, match="^error: configs/sac.yaml has no model_training.*configs/mbpo.yaml"):
        throughput.build_run("configs/sac.yaml", 10, 1, [], str(tmp_path))


@pytest.mark.parametrize(("in_graph", "path"), [("true", "in-graph gradients"), ("false", "autograd's backward")])
def test_the_compiled_row_says_how_the_update_gets_its_gradients(tmp_path, in_graph, path):
    run = throughput.build_run(
        str(ROOT / "configs" / "mbpo.yaml"), updates=30, threads=1, extra=["--model.gradients_in_graph", in_graph], root=str(tmp_path)
    )
    run.agent.prepare_update(run.agent.configure_optimizers(), compile=True)  # as agent_sac_step does; compiling waits for the first call

    assert throughput.gradients_path(run.agent) == path
