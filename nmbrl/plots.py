"""Plot of eval return against env steps, from a run's MLflow metrics.

Made at the end of every ``fit`` (see ``callbacks.Evaluation``), and for any finished run with::

    python -m nmbrl.plots --run-id <run id> [--tracking-uri sqlite:///runs/mlflow.db] [--log-artifact]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from nmbrl.errors import ConfigError  # noqa: E402

METRIC = "eval/return_mean"


def eval_returns(client: MlflowClient, run_id: str) -> list[tuple[int, float]]:
    """(env steps, mean eval return) of a run, in env-step order."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, METRIC))


def plot_eval_returns(client: MlflowClient, run_id: str, path: Path) -> Path:
    """Save the eval-return curve of ``run_id`` as a PNG at ``path``."""
    points = eval_returns(client, run_id)
    if not points:
        raise ConfigError(f"run {run_id} has no {METRIC!r} metric: it was never evaluated (add an `evaluation` group to its config).")
    steps, returns = zip(*points)
    run = client.get_run(run_id)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(steps, returns, marker="o")
    axes.set_xlabel("env steps")
    axes.set_ylabel("eval return (mean)")
    axes.set_title(run.info.run_name or run_id)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot eval return against env steps for an MLflow run.")
    parser.add_argument("--run-id", required=True, help="MLflow run id (shown in the MLflow UI and the run folder name)")
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db", help="MLflow store of the run")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: eval_returns-<run id>.png)")
    parser.add_argument("--log-artifact", action="store_true", help="also log the PNG to the run's artifacts")
    args = parser.parse_args(argv)
    client = MlflowClient(args.tracking_uri)
    path = args.out or Path(f"eval_returns-{args.run_id}.png")
    try:
        plot_eval_returns(client, args.run_id, path)
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    if args.log_artifact:
        client.log_artifact(args.run_id, str(path))
    print(path)


if __name__ == "__main__":
    main()
