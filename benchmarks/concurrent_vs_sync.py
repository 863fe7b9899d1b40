"""Concurrent against synchronous MBPO: wall-clock time and env steps to reach an eval return.

Runs ``python cli.py fit`` with ``configs/mbpo.yaml`` (sync) and ``configs/mbpo_async.yaml``
(concurrent) for each seed, one run at a time so that the modes get the same machine, reads the
evaluations back from MLflow and prints, side by side, when each run first reached the target
return: seconds since the run started (from the metric's timestamp) and env steps.

Each run takes the CLI's ``--torch_threads auto`` unless ``--threads`` is given: on an idle
2-core machine that is 2 threads in both modes; concurrent mode's agent lends one to the
world-model process while it retrains, and its collector runs at the lowest priority
(``nmbrl.concurrent.cores``).

Example (the issue's figures; about 3 x (21 + 21) minutes on the 2-core machine of RESULTS.md):

    python benchmarks/concurrent_vs_sync.py --budget 20000 --seeds 0 1 2 --target 750 \\
        --out benchmarks/results/concurrent_vs_sync

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

from learning_curves import create_store, run_command, run_one

MODES = {"sync": "configs/mbpo.yaml", "concurrent": "configs/mbpo_async.yaml"}


class Result(NamedTuple):
    """One run: when it first reached the target (None if never) and how it ended."""

    seconds_to_target: float | None
    steps_to_target: int | None
    final_return: float
    seconds: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="cartpole-swingup", help="gymnasium id or dm_control domain-task")
    parser.add_argument("--budget", type=int, default=20_000, help="env steps per run, exploration included")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=750.0, help="eval return to reach")
    parser.add_argument("--common-args", default="", help="extra CLI overrides for both modes")
    parser.add_argument("--sync-args", default="", help="extra CLI overrides for the sync runs")
    parser.add_argument("--concurrent-args", default="", help="extra CLI overrides for the concurrent runs")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="the modes to run")
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


def results(out: Path, target: float) -> dict[str, dict[int, Result]]:
    """``{mode: {seed: Result}}`` from the benchmark's MLflow store."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("benchmark")
    found: dict[str, dict[int, Result]] = {}
    for run in client.search_runs([experiment.experiment_id]):
        mode, seed = run.info.run_name.rsplit("-seed", 1)
        history = [(m.timestamp, m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/return_mean")]
        if not history:
            continue
        seconds, steps = first_reaching(history, target, run.info.start_time)
        final = max(history, key=lambda entry: entry[1])[2]
        total = ((run.info.end_time or max(h[0] for h in history)) - run.info.start_time) / 1000
        found.setdefault(mode, {})[int(seed)] = Result(seconds, steps, final, total)
    return found


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    import numpy as np

    if not values:
        return "–"
    return f"{np.mean(values) / scale:.{digits}f} ± {np.std(values) / scale:.{digits}f}"


def table(found: dict[str, dict[int, Result]], target: float) -> str:
    """Modes side by side; times and steps to the target are over the seeds that reached it."""
    modes = [mode for mode in MODES if mode in found]
    rows = {
        f"seeds reaching {target:g}": lambda runs: f"{sum(r.steps_to_target is not None for r in runs)} / {len(runs)}",
        f"wall-clock to {target:g} (min)": lambda runs: mean_std([r.seconds_to_target for r in runs if r.seconds_to_target is not None], 60),
        f"env steps to {target:g}": lambda runs: mean_std([r.steps_to_target for r in runs if r.steps_to_target is not None], digits=0),
        "final eval return": lambda runs: mean_std([r.final_return for r in runs]),
        "wall-clock per run (min)": lambda runs: mean_std([r.seconds for r in runs], 60),
    }
    lines = ["| | " + " | ".join(modes) + " |", "|" + " --- |" * (len(modes) + 1)]
    for name, cell in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(list(found[mode].values())) for mode in modes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out = args.out.resolve()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        create_store(args.out)
        for seed in args.seeds:
            for mode in args.modes:
                config = MODES[mode]
                extra = shlex.split(args.common_args) + shlex.split(getattr(args, f"{mode}_args"))
                name = f"{mode}-seed{seed}"
                command = run_command(config, extra, args.env, args.budget, seed, name, args.out)
                run_one(command, args.out / "logs" / f"{name}.log", args.threads)
    report = f"{args.env}, budget {args.budget} env steps, seeds {args.seeds}\n\n{table(results(args.out, args.target), args.target)}\n"
    print(report)
    (args.out / "table.md").write_text(report)


if __name__ == "__main__":
    sys.exit(main())
