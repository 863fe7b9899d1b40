"""Load what a run trained, outside the CLI: from a checkpoint file, a run folder or an MLflow run id.

    from nmbrl import load_agent
    agent = load_agent("runs/1/<run id>")        # or ".../checkpoints/last.ckpt", or "<run id>"
    action = agent.act(observation)

Every failure is a ``ConfigError`` whose message names the fix.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from nmbrl.agent.sac import SACAgent
from nmbrl.agent.trained import TrainedAgent
from nmbrl.checkpoints import CHECKPOINT_KEY, read_checkpoint
from nmbrl.errors import ConfigError
from nmbrl.preflight import DEFAULT_TRACKING_URI, check_server
from nmbrl.tracking import sqlite_path

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# The policy logged as an MLflow model at the end of fit (nmbrl.serving): its artifact path and file.
POLICY_MODEL_NAME = "policy"
AGENT_FILE = "agent.ckpt"


def load_agent(
    source: str | os.PathLike,
    tracking_uri: str = DEFAULT_TRACKING_URI,
    device: str | torch.device = "cpu",
    averaged: bool | None = None,
) -> TrainedAgent:
    """The trained agent of ``source``: a checkpoint file, a run folder, or an MLflow run id (in ``tracking_uri``).

    ``averaged`` picks the policy: None (default) the one evaluation and ``cli.py test`` ran
    (the averaged policy where the run kept one), True the averaged one, False the actor.
    """
    path = agent_file(source, tracking_uri)
    record = read_checkpoint(path, mmap=True)[CHECKPOINT_KEY]  # checks it first; mmap: the tensors stay on disk
    agent = SACAgent.load_from_checkpoint(path, map_location=device, weights_only=True)
    return TrainedAgent(agent.to(device), record["env"], record["observation_dim"], averaged)


def load_world_model(source: str | os.PathLike, tracking_uri: str = DEFAULT_TRACKING_URI, device: str | torch.device = "cpu"):
    """The trained ensemble world model of ``source`` (a checkpoint file, a run folder or an MLflow run id)."""
    from nmbrl.world_model.loading import world_model_from_checkpoint

    return world_model_from_checkpoint(read_checkpoint(find_checkpoint(source, tracking_uri)), device=device)


def load_imagined_env(
    source: str | os.PathLike,
    batch_size: int,
    start_states=None,
    tracking_uri: str = DEFAULT_TRACKING_URI,
    device: str | torch.device = "cpu",
):
    """The world model of ``source`` as an ``ImaginedEnv`` of ``batch_size`` rows, starting from ``start_states`` on reset."""
    from nmbrl.world_model.loading import imagined_env_from_checkpoint

    checkpoint = read_checkpoint(find_checkpoint(source, tracking_uri))
    return imagined_env_from_checkpoint(checkpoint, batch_size, start_states=start_states, device=device)


def agent_file(source: str | os.PathLike, tracking_uri: str) -> Path:
    """The file to load an agent from: a checkpoint, or for a run without one here, its logged policy model."""
    try:
        return find_checkpoint(source, tracking_uri)
    except ConfigError:
        if not looks_like_run_id(source):
            raise
        return download_policy_model(str(source), tracking_uri)


def find_checkpoint(source: str | os.PathLike, tracking_uri: str = DEFAULT_TRACKING_URI) -> Path:
    """The checkpoint file ``source`` names: itself, the newest ``last.ckpt`` of a run folder, or that of an MLflow run."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        return newest_checkpoint(path)
    if looks_like_run_id(source):
        return newest_checkpoint(run_folder(str(source), tracking_uri))
    raise ConfigError(
        f"{str(source)!r} is neither a file, nor a folder, nor an MLflow run id (32 hex digits): pass a checkpoint "
        "(runs/<experiment id>/<run id>/checkpoints/last.ckpt), a run folder (runs/<experiment id>/<run id>) or a run id."
    )


def looks_like_run_id(source: str | os.PathLike) -> bool:
    return isinstance(source, str) and bool(RUN_ID.match(source))


def newest_checkpoint(folder: Path) -> Path:
    """``last.ckpt`` (else the newest ``.ckpt``) in ``folder/checkpoints``, or in ``folder`` itself."""
    checkpoints = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    for pattern in ("last*.ckpt", "*.ckpt"):
        found = [p for p in checkpoints.glob(pattern) if not p.name.startswith(".")]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    raise ConfigError(
        f"no checkpoint in {str(checkpoints)!r}: a run folder holds them in checkpoints/ (runs/<experiment id>/<run id>/checkpoints/)."
    )


def mlflow_client(tracking_uri: str):
    """A client of an existing MLflow store; ConfigError if there is none at ``tracking_uri`` or it cannot be reached."""
    from mlflow import MlflowClient

    sqlite_file = sqlite_path(tracking_uri)
    if sqlite_file is not None and not sqlite_file.is_file():
        raise ConfigError(
            f"tracking_uri={tracking_uri!r}: no MLflow store at {str(sqlite_file)!r}. Pass the tracking URI the run "
            f"logged to (the config's trainer.logger.init_args.tracking_uri; default {DEFAULT_TRACKING_URI}, relative to "
            "the folder training ran in)."
        )
    if tracking_uri.startswith(("http://", "https://")):
        check_server(tracking_uri, timeout_s=5.0)
    return MlflowClient(tracking_uri)


def mlflow_run(run_id: str, tracking_uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client(tracking_uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"no MLflow run {run_id} in {tracking_uri}: check the id (the run page's URL or `mlflow runs list`) and "
            "pass the tracking URI the run logged to."
        ) from None


def run_folder(run_id: str, tracking_uri: str) -> Path:
    """The run folder of an MLflow run: ``<default_root_dir>/<experiment id>/<run id>``, as its config logged them."""
    run = mlflow_run(run_id, tracking_uri)
    root = run.data.params.get("trainer/default_root_dir") or "."
    return Path(root) / run.info.experiment_id / run_id


def download_policy_model(run_id: str, tracking_uri: str) -> Path:
    """The agent file of the policy model logged in an MLflow run (``nmbrl.serving``), downloaded to a temporary folder."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    run = mlflow_run(run_id, tracking_uri)
    try:
        model = download_artifacts(
            artifact_uri=f"runs:/{run_id}/{POLICY_MODEL_NAME}", dst_path=tempfile.mkdtemp(prefix="nmbrl-"), tracking_uri=tracking_uri
        )
    except (MlflowException, OSError):
        raise ConfigError(
            f"MLflow run {run_id} has no checkpoint here (looked in {str(run_folder(run_id, tracking_uri))!r}) and no "
            f"logged policy model ({POLICY_MODEL_NAME!r}; run status {run.info.status}): run from the folder training ran "
            "in, or pass a checkpoint path."
        ) from None
    return Path(model) / "artifacts" / AGENT_FILE
