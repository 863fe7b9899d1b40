"""MLflow tracking: a logger whose x-axis is env steps, and the run's config saved as an artifact."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only


class EnvStepMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, with metrics stepped by environment steps instead of updates.

    RL curves are read against env steps; every metric is logged at the latest ``env_steps``
    value seen (``log_now`` adds it to each write; Lightning's own writes, such as ``epoch``,
    reuse the last one). The folder of an sqlite tracking URI is created on first use, and runs
    started at once on a fresh sqlite store take turns creating it (``sqlite_store_lock``).

    Args:
        experiment_name: MLflow experiment that holds the run (``cli.py`` names it ``<algorithm>-<env>``,
            e.g. ``mbpo-cartpole-swingup``; ``nmbrl`` when the logger is built without one).
        run_name: Name of the MLflow run (default: MLflow picks one).
        tracking_uri: Where runs are stored, e.g. ``sqlite:///runs/mlflow.db`` or ``http://host:5000``.
        artifact_location: Where new experiments keep artifacts (default: ``mlartifacts`` beside an sqlite file).
        tags: Tags of the run.
        run_id: Continue this existing run instead of starting a new one (``--ckpt_path`` sets it
            to the checkpoint's run, so a resumed run logs into the same MLflow run).

    A continued run is marked running again. A run stopped by Ctrl+C ends with MLflow status
    ``KILLED`` (set through ``end_status``), a crashed one ``FAILED``, a completed one ``FINISHED``.
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tracking_uri: str = "sqlite:///runs/mlflow.db",
        artifact_location: str | None = None,
        tags: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        sqlite_file = sqlite_path(tracking_uri)
        if artifact_location is None and sqlite_file is not None:
            artifact_location = (sqlite_file.parent / "mlartifacts").resolve().as_uri()
        with sqlite_store_lock(tracking_uri):  # MLflow's client creates and migrates the store here
            super().__init__(
                experiment_name=experiment_name or "nmbrl",
                run_name=run_name,
                tracking_uri=tracking_uri,
                artifact_location=artifact_location,
                tags=tags,
                run_id=run_id,
            )
        self._env_steps = 0
        self.end_status: str | None = None
        self.continued_from_status: str | None = None
        self.keep_status = False

    @property
    def experiment(self):
        if self._initialized:
            return self._mlflow_client
        continued = self._run_id is not None
        with sqlite_store_lock(self._tracking_uri):  # two new runs could both create the experiment
            client = super().experiment
        if continued:
            self.continued_from_status = client.get_run(self._run_id).info.status
            client.update_run(self._run_id, status="RUNNING")
        return client

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self.keep_status and self.continued_from_status is not None:
            status = self.continued_from_status  # testing a run does not change how its training ended
        elif status == "failed" and self.end_status is not None:
            status = self.end_status
        super().finalize(status)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._env_steps = int(metrics.get("env_steps", self._env_steps))
        super().log_metrics(metrics, step=self._env_steps)


def sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


@contextlib.contextmanager
def sqlite_store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock on the folder of an sqlite store (nothing for other stores).

    MLflow creates a missing store, and migrates an old one, the first time a process opens it,
    with no guard against another process doing the same: two runs started together on a fresh
    store failed with ``duplicate column name``. It also creates a missing experiment without
    one, so two first runs of an experiment could fail on its unique name. The lock is an
    ``flock`` on the folder itself, so no lock file is left behind; it is released if the process dies.
    """
    sqlite_file = sqlite_path(tracking_uri)
    if sqlite_file is None:
        yield
        return
    sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(sqlite_file.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # closing releases the lock


def run_dir(trainer: Trainer) -> Path:
    """The run folder, ``<default_root_dir>/<experiment id>/<run id>``: config and checkpoints live there."""
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    return Path(trainer.default_root_dir) / str(logger.name) / str(logger.version)


def logging_due(count: int, trainer: Trainer) -> bool:
    """Whether update or batch ``count`` logs: every ``log_every_n_steps``, and never for 0, as Lightning reads it."""
    every = trainer.log_every_n_steps
    return every > 0 and count % every == 0


def log_now(trainer: Trainer, metrics: dict[str, float]) -> None:
    """Write ``metrics`` to every logger at once, tagged with the current env step.

    For events rarer than Lightning's ``log_every_n_steps`` (model retraining, evaluation),
    which ``LightningModule.log`` would drop between logging steps.
    """
    env_steps = trainer.datamodule.env_steps
    for logger in trainer.loggers:
        logger.log_metrics({**metrics, "env_steps": env_steps}, step=env_steps)


class SaveConfigToRun(SaveConfigCallback):
    """Save the resolved config as ``config.yaml`` in the run folder, and log it to MLflow.

    Lightning's own callback writes to ``trainer.log_dir``, which MLFlowLogger leaves undefined
    for a database store; here the config goes to the run folder instead, to the run's
    artifacts, and to its parameters (flattened by the logger, e.g. ``model/gamma``).
    """

    def __init__(self, parser, config, config_filename: str = "config.yaml", overwrite: bool = True, multifile: bool = False) -> None:
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir=False)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # `test` reuses the run's folder and MLflow run; its config is the training one
        folder = run_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_filename
        if path.exists():
            # A resumed run: keep the original, add this one beside it (MLflow parameters cannot change).
            path = folder / f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
            self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
            if isinstance(trainer.logger, MLFlowLogger):
                trainer.logger.experiment.log_artifact(trainer.logger.run_id, str(path))
            return
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
        logger = trainer.logger
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(path))
        if isinstance(logger, Logger):
            config = self.config.as_dict()
            config.pop("config", None)
            logger.log_hyperparams(config)


def mlflow_run_of(trainer: Trainer) -> tuple[str, str] | None:
    """The tracking URI and run id of the trainer's MLflow logger, for processes that log into the same run."""
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            return logger.experiment.tracking_uri, logger.run_id
    return None


class RoleLogger:
    """Metric writes from a role process into the parent's MLflow run, stepped by env steps.

    Holds only the URI and run id, so it can be pickled into a spawned process; the client is
    made there on first use. With ``run=None`` nothing is logged.
    """

    def __init__(self, run: tuple[str, str] | None) -> None:
        self.run = run
        self._client = None

    def log(self, metrics: dict[str, float], env_steps: int) -> None:
        if self.run is None:
            return
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        tracking_uri, run_id = self.run
        if self._client is None:
            self._client = MlflowClient(tracking_uri)
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, env_steps) for key, value in metrics.items()]
        self._client.log_batch(run_id, metrics=batch, synchronous=True)
