"""MBPO against SAC: eval return by env steps, several seeds, from one invocation.

Runs ``python cli.py fit`` for each (algorithm, seed) with a shared env-step budget, reads the
evaluation curves back from MLflow, prints a table (mean ± std over seeds at each evaluation
point, plus wall-clock time per run) and saves a PNG plot of the same curves.

Example (the issue's targets):

    python benchmarks/learning_curves.py --env InvertedPendulum-v5 --budget 5000 \\
        --mbpo configs/mbpo_inverted_pendulum.yaml --sac configs/sac.yaml \\
        --sac-args "--data.random_steps 500 --data.epoch_length 250" --out benchmarks/results/inverted_pendulum
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's nmbrl, whichever one pip points at
LAST = 3  # evaluations averaged in the table's smoothed final row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, help="gymnasium id or dm_control domain-task")
    parser.add_argument("--budget", type=int, required=True, help="env steps per run, exploration included")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mbpo", default="configs/mbpo.yaml", help="MBPO config ('' to skip)")
    parser.add_argument("--sac", default="configs/sac.yaml", help="SAC config ('' to skip)")
    parser.add_argument("--mbpo-args", default="", help="extra CLI overrides for the MBPO runs")
    parser.add_argument("--sac-args", default="", help="extra CLI overrides for the SAC runs")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cores/jobs threads)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores/jobs)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the MLflow store, logs, table and plot")
    parser.add_argument("--report-only", action="store_true", help="skip training; report what --out holds")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="also report the runs of these --out folders")
    return parser.parse_args(argv)


def read_override(extra: list[str], key: str, default: int) -> int:
    return int(extra[extra.index(key) + 1]) if key in extra else default


def run_command(config: str, extra: list[str], env: str, budget: int, seed: int, name: str, out: Path) -> list[str]:
    """The ``cli.py fit`` command of one run, with ``max_epochs`` chosen to spend ``budget`` env steps."""
    data = yaml.safe_load(Path(ROOT / config).read_text())["data"]
    random_steps = read_override(extra, "--data.random_steps", data["random_steps"])
    epoch_length = read_override(extra, "--data.epoch_length", data["epoch_length"])
    max_epochs = max(1, (budget - random_steps) // epoch_length)
    return [
        sys.executable, "cli.py", "fit", "--config", config, *extra,
        "--data.env", env, "--seed_everything", str(seed), "--trainer.max_epochs", str(max_epochs),
        "--trainer.default_root_dir", str(out / "runs"),
        "--trainer.logger.init_args.tracking_uri", f"sqlite:///{out / 'mlflow.db'}",
        "--trainer.logger.init_args.experiment_name", "benchmark",
        "--trainer.logger.init_args.run_name", name,
    ]  # fmt: skip


def run_one(command: list[str], log: Path, threads: int | None) -> float:
    """Run ``command`` with ``threads`` torch threads (None: the CLI's 'auto'), its output in ``log``; its seconds."""
    env = dict(os.environ)
    if threads is not None:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = [*command, "--torch_threads", str(threads)]  # the CLI sets torch's threads itself
    start = time.perf_counter()
    with log.open("w") as f:
        result = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        print(f"FAILED ({result.returncode}): {shlex.join(command)}; see {log}", file=sys.stderr)
    else:
        print(f"done in {elapsed / 60:.1f} min: {log.stem}", flush=True)
    (log.with_suffix(".seconds")).write_text(f"{elapsed:.1f}\n")
    return elapsed


def create_store(out: Path) -> None:
    """Create the MLflow database and experiment up front: parallel runs would race to create them.

    Under the store's lock, as the runs' own loggers take it: two benchmark processes started
    together on one fresh ``--out`` would otherwise race to create the tables and the experiment.
    """
    import mlflow

    from nmbrl.tracking import sqlite_store_lock

    uri = f"sqlite:///{out / 'mlflow.db'}"
    with sqlite_store_lock(uri):
        client = mlflow.MlflowClient(uri)
        if client.get_experiment_by_name("benchmark") is None:
            client.create_experiment("benchmark", artifact_location=(out / "mlartifacts").as_uri())


def curves(out: Path) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """``{algorithm: {seed: [(env_steps, eval return), ...]}}`` from the benchmark's MLflow store."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("benchmark")
    result: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for run in client.search_runs([experiment.experiment_id]):
        algo, seed = run.info.run_name.rsplit("-seed", 1)
        for name, metric in ((algo, "eval/return_mean"), (f"{algo}-actor", "eval/actor_return_mean")):
            # eval/actor_return_mean: the actor itself, when the runs evaluate an averaged policy (Evaluation.also_actor)
            history = client.get_metric_history(run.info.run_id, metric)
            if history:
                result.setdefault(name, {})[int(seed)] = sorted((m.step, m.value) for m in history)
    return result


def table(data: dict[str, dict[int, list[tuple[int, float]]]], seconds: dict[str, list[float]]) -> str:
    import numpy as np

    algos = sorted(data)
    steps = sorted({s for algo in algos for curve in data[algo].values() for s, _ in curve})
    header = "| env steps | " + " | ".join(f"{a} (n={len(data[a])})" for a in algos) + " |"
    lines = [header, "|" + " --- |" * (len(algos) + 1)]
    for step in steps:
        cells = []
        for algo in algos:
            values = [v for curve in data[algo].values() for s, v in curve if s == step]
            cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}" if values else "")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    finals = [" / ".join(f"{curve[-1][1]:.1f}" for _, curve in sorted(data[a].items())) for a in algos]
    lines.append("| last evaluation, per seed | " + " | ".join(finals) + " |")
    # One evaluation is a noisy reading of a curve that still moves; the last few say more of where it ends.
    tails = [[np.mean([v for _, v in curve[-LAST:]]) for curve in data[a].values()] for a in algos]
    lines.append(f"| mean of each seed's last {LAST} evaluations | " + " | ".join(f"{np.mean(t):.1f} ± {np.std(t):.1f}" for t in tails) + " |")
    walls = [f"{np.mean(seconds[a]) / 60:.1f} min" if seconds.get(a) else "" for a in algos]
    lines.append("| wall-clock per run | " + " | ".join(walls) + " |")
    return "\n".join(lines)


def plot(data: dict[str, dict[int, list[tuple[int, float]]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo in sorted(data):
        steps = sorted({s for curve in data[algo].values() for s, _ in curve})
        by_step = [[v for curve in data[algo].values() for s, v in curve if s == step] for step in steps]
        mean, std = np.array([np.mean(v) for v in by_step]), np.array([np.std(v) for v in by_step])
        ax.plot(steps, mean, label=f"{algo} ({len(data[algo])} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="env steps", ylabel="eval return", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out = args.out.resolve()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    jobs = []
    for algo, config, extra in (("mbpo", args.mbpo, args.mbpo_args), ("sac", args.sac, args.sac_args)):
        for seed in args.seeds if config else []:
            name = f"{algo}-seed{seed}"
            command = run_command(config, shlex.split(extra), args.env, args.budget, seed, name, args.out)
            jobs.append((command, args.out / "logs" / f"{name}.log"))
    if not args.report_only:
        create_store(args.out)
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: run_one(*job, threads), jobs))
    seconds: dict[str, list[float]] = {}
    data: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for folder in [args.out, *args.merge]:
        for log in (folder / "logs").glob("*.seconds"):
            seconds.setdefault(log.stem.rsplit("-seed", 1)[0], []).append(float(log.read_text()))
        for algo, runs in curves(folder.resolve()).items():
            data.setdefault(algo, {}).update(runs)
    report = f"{args.env}, budget {args.budget} env steps, seeds {args.seeds}\n\n{table(data, seconds)}\n"
    print(report)
    (args.out / "table.md").write_text(report)
    plot(data, f"{args.env}: eval return (mean ± std over seeds)", args.out / "curves.png")
    print(f"plot: {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
