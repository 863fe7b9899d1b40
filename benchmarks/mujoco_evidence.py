"""MBPO against the paper and SAC on a MuJoCo task: the tables and the plot of issue 25, from one MLflow store.

Reads the runs of ``mbpo-<env>`` and ``sac-<env>`` (the CLI's default experiment names) and prints:

- the eval return every ``--every`` env steps: each MBPO and SAC run (named by seed), SAC's mean,
  and the paper's MBPO return where it gives one (``--paper``);
- for each MBPO run, per window of ``--every`` env steps: the wall-clock (between the window's
  two evaluations) and where it went (``time/model_training_s``, ``time/rollout_s``,
  ``time/eval_s``; the rest is mostly SAC updates), the world model's holdout error, epochs per
  retraining, the rollout horizon and the model buffer's size;
- from the ``/usr/bin/time -v`` logs of the run's sittings (``--logs``, one file per sitting, in
  order): how many times it was resumed, where each sitting started, and its peak RSS.

A window whose wall-clock spans a resume is marked: it includes the time the run was stopped.
It also saves the plot of every curve and the paper's points (``--plot``). Example (issue 25):

    python benchmarks/mujoco_evidence.py --store /work/runs/hopper --env Hopper-v5 \\
        --logs '/work/runs/hopper/logs/mbpo_s0*.log' --plot benchmarks/figures/hopper_mbpo_vs_sac.png
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# MBPO's published Hopper returns (../shared/REFERENCE.md): env steps -> mean return.
PAPER = {"Hopper-v5": {20_000: 524.0, 50_000: 1665.0, 100_000: 3293.0, 125_000: 3303.0}}
PHASES = {"model training": "time/model_training_s", "rollouts": "time/rollout_s", "evaluation": "time/eval_s"}


@dataclass
class Curve:
    name: str  # e.g. "mbpo seed 0"
    run_id: str
    points: dict[int, tuple[float, int]]  # env steps -> (eval return, timestamp ms)


def runs_of(client, experiment: str, algorithm: str) -> list[Curve]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    curves = []
    for run in client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"]):
        history = client.get_metric_history(run.info.run_id, "eval/return_mean")
        if history:
            seed = run.data.params.get("seed_everything", "?")
            points = {m.step: (m.value, m.timestamp) for m in history}
            curves.append(Curve(f"{algorithm} seed {seed}", run.info.run_id, points))
    return curves


def window_values(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def in_window(values: list[tuple[int, float]], start: int, end: int) -> list[float]:
    return [v for s, v in values if start < s <= end]


@dataclass
class Sitting:
    log: Path
    first_env_steps: int | None
    last_env_steps: int | None
    peak_rss_gib: float | None  # None: the process did not finish (no ``time -v`` summary)

    def describe(self) -> str:
        evals = "no evaluation" if self.first_env_steps is None else f"evaluations from {self.first_env_steps} to {self.last_env_steps} env steps"
        rss = f"peak RSS {self.peak_rss_gib:.2f} GiB" if self.peak_rss_gib is not None else "did not finish: no peak RSS"
        return f"{self.log.name}: {evals}, {rss}"


def sittings(pattern: str | None) -> list[Sitting]:
    """One per log of ``/usr/bin/time -v python cli.py fit ...``, oldest first."""
    found = []
    for log in sorted((Path(p) for p in glob.glob(pattern or "")), key=lambda p: p.stat().st_mtime):
        text = log.read_text(errors="replace")
        evaluated = [int(steps) for steps in re.findall(r"epoch \d+: env steps (\d+)", text)]
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        first, last = (evaluated[0], evaluated[-1]) if evaluated else (None, None)
        found.append(Sitting(log, first, last, int(rss.group(1)) / 1024**2 if rss else None))
    return found


def returns_table(mbpo: list[Curve], sac: list[Curve], paper: dict[int, float], every: int) -> str:
    curves = mbpo + sac
    last = max((s for c in curves for s in c.points), default=0)
    header = ["env steps", *(c.name for c in curves), "SAC mean", "paper MBPO"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for steps in range(every, last + 1, every):
        cells = [f"{c.points[steps][0]:.1f}" if steps in c.points else "" for c in curves]
        sac_here = [c.points[steps][0] for c in sac if steps in c.points]
        cells.append(f"{sum(sac_here) / len(sac_here):.1f}" if sac_here else "")
        cells.append(f"{paper[steps]:.0f}" if steps in paper else "")
        if any(cells):
            lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_table(client, curve: Curve, every: int, resumed_at: list[int]) -> str:
    metrics = {name: window_values(client, curve.run_id, key) for name, key in PHASES.items()}
    holdout = window_values(client, curve.run_id, "model/holdout_mse")
    epochs = window_values(client, curve.run_id, "model/epochs")
    horizon = window_values(client, curve.run_id, "rollout/horizon")
    model_buffer = window_values(client, curve.run_id, "rollout/model_buffer_size")
    header = ["env steps", "wall-clock (min)", *(f"{name} (min)" for name in PHASES), "rest: SAC, collection (min)",
              "holdout MSE", "model epochs per retraining", "rollout horizon", "model buffer"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    steps = sorted(curve.points)
    for start, end in zip(steps, steps[1:]):
        wall = (curve.points[end][1] - curve.points[start][1]) / 60_000
        phases = [sum(in_window(metrics[name], start, end)) / 60 for name in PHASES]
        resumed = any(start < r <= end for r in resumed_at)
        wall_cell = f"{wall:.1f} (resumed here)" if resumed else f"{wall:.1f}"
        rest = "" if resumed else f"{wall - sum(phases):.1f}"
        last = lambda values: f"{values[-1]:.4g}" if values else ""  # noqa: E731
        whole = lambda values: f"{values[-1]:.0f}" if values else ""  # noqa: E731
        mean = lambda values: f"{sum(values) / len(values):.0f}" if values else ""  # noqa: E731
        h = in_window(holdout, start, end)
        lines.append(
            f"| {start}-{end} | {wall_cell} | " + " | ".join(f"{p:.1f}" for p in phases)
            + f" | {rest} | {last(h)} | {mean(in_window(epochs, start, end))} | {last(in_window(horizon, start, end))}"
            + f" | {whole(in_window(model_buffer, start, end))} |"
        )  # fmt: skip
    return "\n".join(lines)


def plot(mbpo: list[Curve], sac: list[Curve], paper: dict[int, float], env: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for curve, style in [(c, "-") for c in mbpo] + [(c, "--") for c in sac]:
        steps = sorted(curve.points)
        ax.plot(steps, [curve.points[s][0] for s in steps], style, label=curve.name)
    if paper:
        ax.plot(list(paper), list(paper.values()), "k*", markersize=10, label="MBPO paper (mean)")
    ax.set(xlabel="env steps", ylabel="eval return", title=f"{env}: MBPO (paper settings) and SAC")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="folder holding mlflow.db")
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--every", type=int, default=1000, help="env steps between table rows")
    parser.add_argument("--logs", default=None, help="glob of the MBPO run's /usr/bin/time -v logs, one per sitting")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the curves and the paper's points")
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{args.store / 'mlflow.db'}")
    mbpo = runs_of(client, f"mbpo-{args.env.lower()}", "mbpo")
    sac = runs_of(client, f"sac-{args.env.lower()}", "sac")
    paper = PAPER.get(args.env, {})
    print(f"## {args.env}: eval return (mean of the evaluation's episodes)\n\n{returns_table(mbpo, sac, paper, args.every)}\n")
    seated = sittings(args.logs)
    resumed_at = [s.first_env_steps for s in seated[1:] if s.first_env_steps is not None]
    if seated:
        print(f"{len(seated)} sitting(s), resumed {len(seated) - 1} time(s):\n")
        for s in seated:
            print(f"- {s.describe()}")
        print()
    for curve in mbpo:
        print(f"## {curve.name}: where the time goes, and the world model\n\n{time_table(client, curve, args.every, resumed_at)}\n")
    if args.plot is not None:
        plot(mbpo, sac, paper, args.env, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
