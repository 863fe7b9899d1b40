"""Concurrent against synchronous MBPO: learning, staleness and wall-clock of each setting, over seeds.

Runs ``python cli.py fit`` for each seed and each variant, one run at a time so that they get the
same machine: ``sync`` (``configs/mbpo.yaml``), ``concurrent`` (``configs/mbpo_async.yaml`` as
shipped) and the ablations of concurrent mode (``VARIANTS``): ``lockstep`` (sync's order exactly),
``exact-pacing`` (the collector never ahead, policy and model free to lag), ``lead-10`` and
``lead-100`` (the collector up to that many env steps ahead). It reads the runs back from MLflow and
prints, side by side: the return at the end, the mean of the last 3 evaluations (steadier than the
last one alone) and the area under the eval curve (the mean return over the run, by the trapezoid
rule), each also as a ratio to sync's mean; when each run first reached
the target return (seconds since it started, from the metric's timestamp, and env steps); the
staleness the roles logged (the collector's policy age in agent updates, the rollouts' model age in
env steps); the pacing they kept (agent updates per real transition at the end, the agent's share of
time spent waiting for env steps); and the wall-clock per run.

Each run takes the CLI's ``--torch_threads auto`` unless ``--threads`` is given: on an idle
2-core machine that is 2 threads in both modes; concurrent mode's agent lends one to the
world-model process while it retrains, and its collector runs at the lowest priority
(``nmbrl.concurrent.cores``).

Example (about 22 minutes per run on the 2-core machine of RESULTS.md):

    python benchmarks/concurrent_vs_sync.py --budget 20000 --seeds 0 1 2 3 4 --target 750 \\
        --modes sync lockstep --out benchmarks/results/concurrent_vs_sync

More seeds or variants can be added to the same ``--out`` later; ``--report-only`` prints the table.

A smoke test on a tiny budget:

    python benchmarks/concurrent_vs_sync.py --budget 300 --seeds 0 --target 0 --out /tmp/cvs \\
        --common-args "--data.random_steps 200 --data.epoch_length 100 --data.updates_per_step 1 \\
        --model_training.world_model.init_args.max_epochs 2 --rollouts.batch_size 200 --evaluation.episodes 1"
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import NamedTuple

from learning_curves import LAST, create_store, run_command, run_one

ASYNC = "configs/mbpo_async.yaml"
# Each variant: its config and the overrides that make it (the concurrent ones on top of --concurrent-args).
VARIANTS = {
    "sync": ("configs/mbpo.yaml", []),
    "concurrent": (ASYNC, []),
    "lockstep": (ASYNC, ["--collection.lockstep", "true"]),
    "exact-pacing": (ASYNC, ["--collection.max_lead", "0"]),
    "lead-10": (ASYNC, ["--collection.max_lead", "10"]),
    "lead-100": (ASYNC, ["--collection.max_lead", "100"]),
}
# What the roles logged, as Result's fields: each metric and how a run's history is summed up. The staleness
# is its mean over the run; the pacing, the updates per real transition at the end (the metric is a running
# ratio over the whole run) and the mean share of the agent's time spent waiting for env steps.
LOGGED = {
    "policy_age": ("collector/policy_age_updates", "mean"),
    "model_age": ("rollout/world_model_age_steps", "mean"),
    "update_ratio": ("pacing/update_ratio", "last"),
    "wait_fraction": ("agent/wait_fraction", "mean"),
}


class Result(NamedTuple):
    """One run: when it first reached the target (None if never), how it ended, its mean staleness and its pacing."""

    seconds_to_target: float | None
    steps_to_target: int | None
    final_return: float
    seconds: float
    area: float = float("nan")
    policy_age: float = float("nan")
    model_age: float = float("nan")
    update_ratio: float = float("nan")
    wait_fraction: float = float("nan")
    last_returns: float = float("nan")  # the mean of its last LAST evaluations: steadier than the final one


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="cartpole-swingup", help="gymnasium id or dm_control domain-task")
    parser.add_argument("--budget", type=int, default=20_000, help="env steps per run, exploration included")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=750.0, help="eval return to reach")
    parser.add_argument("--common-args", default="", help="extra CLI overrides for every run")
    parser.add_argument("--sync-args", default="", help="extra CLI overrides for the sync runs")
    parser.add_argument("--concurrent-args", default="", help="extra CLI overrides for every concurrent variant")
    parser.add_argument(
        "--modes", nargs="+", choices=list(VARIANTS), default=["sync", "concurrent"], help="the variants to run (see VARIANTS)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the main process (default: the CLI's 'auto', which leaves concurrent mode's roles their cores)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the MLflow store, logs and table")
    parser.add_argument("--report-only", action="store_true", help="skip training; report what --out holds")
    return parser.parse_args(argv)


def first_reaching(history: list[tuple[int, int, float]], target: float, start_ms: int) -> tuple[float | None, int | None]:
    """Seconds since ``start_ms`` and env steps of the first ``(timestamp_ms, step, value)`` at or above ``target``."""
    for timestamp, step, value in sorted(history, key=lambda entry: entry[1]):
        if value >= target:
            return (timestamp - start_ms) / 1000, step
    return None, None


def mean_return(curve: list[tuple[int, float]]) -> float:
    """The area under an eval curve ``[(env steps, return), ...]`` over its span: its mean return, by the trapezoid rule."""
    curve = sorted(curve)
    if len(curve) == 1:
        return curve[0][1]
    area = sum((s1 - s0) * (r0 + r1) / 2 for (s0, r0), (s1, r1) in zip(curve, curve[1:]))
    return area / (curve[-1][0] - curve[0][0])


def results(out: Path, target: float, unfinished: list[str] | None = None) -> dict[str, dict[int, Result]]:
    """``{mode: {seed: Result}}`` from the benchmark's MLflow store, finished runs only.

    A run still going, or stopped before its budget, would enter the means with a return from
    before its end; it is left out, and ``"<mode> seed <seed> (<status>, <env steps>)"`` goes to ``unfinished``.
    """
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("benchmark")
    found: dict[str, dict[int, Result]] = {}
    # Oldest first, so that a variant and seed run again in the same --out is read from its newest run.
    for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
        mode, seed = run.info.run_name.rsplit("-seed", 1)
        history = [(m.timestamp, m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/return_mean")]
        if run.info.status != "FINISHED":
            if unfinished is not None:
                reached = f"evaluated to {max(h[1] for h in history)} env steps" if history else "not evaluated yet"
                unfinished.append(f"{mode} seed {seed} ({run.info.status}, {reached})")
            continue
        if not history:
            continue
        seconds, steps = first_reaching(history, target, run.info.start_time)
        curve = sorted((step, value) for _, step, value in history)  # in env-step order
        last = [value for _, value in curve[-LAST:]]
        total = ((run.info.end_time or max(h[0] for h in history)) - run.info.start_time) / 1000
        logged = {name: summary_of(client.get_metric_history(run.info.run_id, key), how) for name, (key, how) in LOGGED.items()}
        found.setdefault(mode, {})[int(seed)] = Result(
            seconds, steps, curve[-1][1], total, mean_return(curve), **logged, last_returns=sum(last) / len(last)
        )
    return found


def summary_of(history, how: str) -> float:
    """The ``"mean"`` or the ``"last"`` (highest step) value of a metric's history; NaN if never logged."""
    if not history:
        return float("nan")
    if how == "mean":
        return sum(m.value for m in history) / len(history)
    return max(history, key=lambda m: (m.step, m.timestamp)).value


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    import numpy as np

    if not values:
        return "–"
    return f"{np.mean(values) / scale:.{digits}f} ± {np.std(values) / scale:.{digits}f}"


def ratio_to_sync(found: dict[str, dict[int, Result]], mode: str, field: str) -> str:
    """The variant's mean of ``field`` over sync's, over the seeds both ran."""
    sync = found.get("sync", {})
    seeds = [seed for seed in found[mode] if seed in sync]
    if not seeds:
        return "–"
    ours = [getattr(found[mode][seed], field) for seed in seeds]
    theirs = [getattr(sync[seed], field) for seed in seeds]
    if len(seeds) < 3:
        return f"{sum(ours) / sum(theirs):.3f} (n={len(seeds)})"
    low, high = seed_interval(ours, theirs)
    return f"{sum(ours) / sum(theirs):.3f} (n={len(seeds)}; 90% {low:.2f}-{high:.2f})"


def seed_interval(ours: list[float], theirs: list[float], level: float = 0.9, draws: int = 10_000) -> tuple[float, float]:
    """A ``level`` interval of ``sum(ours) / sum(theirs)`` over seeds, by the paired bootstrap.

    Seeds are drawn with replacement, each bringing both of its runs, so the interval shows how
    far the ratio moves with the choice of seeds: a target inside it is not missed or met beyond
    seed-to-seed noise. Fixed draws (generator seed 0), so a report prints the same figures again.
    """
    import numpy as np

    ours_arr, theirs_arr = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    picks = np.random.default_rng(0).integers(len(ours_arr), size=(draws, len(ours_arr)))
    ratios = ours_arr[picks].sum(axis=1) / theirs_arr[picks].sum(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def table(found: dict[str, dict[int, Result]], target: float) -> str:
    """Variants side by side; times and steps to the target are over the seeds that reached it."""
    modes = [mode for mode in VARIANTS if mode in found]

    def logged(values: list[float]) -> list[float]:
        return [v for v in values if v == v]  # NaN: not logged (sync mode has no collector)

    rows = {
        "seeds": lambda mode, runs: " ".join(str(seed) for seed in sorted(found[mode])),
        "final eval return per seed": lambda mode, runs: ", ".join(f"{found[mode][seed].final_return:.1f}" for seed in sorted(found[mode])),
        "final eval return": lambda mode, runs: mean_std([r.final_return for r in runs]),
        "final return / sync's (same seeds)": lambda mode, runs: ratio_to_sync(found, mode, "final_return"),
        f"mean of the last {LAST} evaluations": lambda mode, runs: mean_std([r.last_returns for r in runs]),
        f"last {LAST} / sync's (same seeds)": lambda mode, runs: ratio_to_sync(found, mode, "last_returns"),
        "area under the eval curve (mean return)": lambda mode, runs: mean_std([r.area for r in runs]),
        "area / sync's (same seeds)": lambda mode, runs: ratio_to_sync(found, mode, "area"),
        "collector's policy age (agent updates)": lambda mode, runs: mean_std(logged([r.policy_age for r in runs]), digits=2),
        "rollouts' model age (env steps)": lambda mode, runs: mean_std(logged([r.model_age for r in runs])),
        "updates per env step at the end (pacing)": lambda mode, runs: mean_std(logged([r.update_ratio for r in runs]), digits=3),
        "agent's time waiting for env steps": lambda mode, runs: mean_std(logged([r.wait_fraction for r in runs]), digits=3),
        f"seeds reaching {target:g}": lambda mode, runs: f"{sum(r.steps_to_target is not None for r in runs)} / {len(runs)}",
        f"wall-clock to {target:g} (min)": lambda mode, runs: mean_std(
            [r.seconds_to_target for r in runs if r.seconds_to_target is not None], 60
        ),
        f"env steps to {target:g}": lambda mode, runs: mean_std(
            [r.steps_to_target for r in runs if r.steps_to_target is not None], digits=0
        ),
        "wall-clock per run (min)": lambda mode, runs: mean_std([r.seconds for r in runs], 60),
    }
    lines = ["| | " + " | ".join(modes) + " |", "|" + " --- |" * (len(modes) + 1)]
    for name, cell in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(mode, list(found[mode].values())) for mode in modes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out = args.out.resolve()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        create_store(args.out)
        for seed in args.seeds:
            for mode in args.modes:
                config, variant_args = VARIANTS[mode]
                own = args.sync_args if mode == "sync" else args.concurrent_args
                extra = shlex.split(args.common_args) + shlex.split(own) + variant_args
                name = f"{mode}-seed{seed}"
                command = run_command(config, extra, args.env, args.budget, seed, name, args.out)
                run_one(command, args.out / "logs" / f"{name}.log", args.threads)
    unfinished: list[str] = []
    found = results(args.out, args.target, unfinished)
    body = table(found, args.target) if found else "No finished runs yet."
    report = f"{args.env}, budget {args.budget} env steps, finished runs in {args.out}\n\n{body}\n"
    if unfinished:
        report += "\nLeft out, not finished: " + "; ".join(unfinished) + "\n"
    print(report)
    (args.out / "table.md").write_text(report)


if __name__ == "__main__":
    sys.exit(main())
