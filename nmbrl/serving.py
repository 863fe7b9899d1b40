"""The trained policy as an MLflow model: a pyfunc whose ``predict`` maps observations to actions.

    import mlflow
    policy = mlflow.pyfunc.load_model("runs:/<run id>/policy")
    actions = policy.predict(observations)  # N x O float32 -> N x A, deterministic

It holds a small agent file (the SAC networks and the checkpoint's ``"nmbrl"`` record, no
replay buffers) and needs only ``nmbrl`` installed to load. ``predict(..., params={"deterministic":
False})`` samples actions instead.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning
import mlflow
import numpy as np
import tensordict
import torch
import torchrl
from lightning.pytorch import LightningModule
from mlflow.models import infer_signature

import nmbrl
from nmbrl.checkpoints import CHECKPOINT_KEY
from nmbrl.loading import AGENT_FILE, POLICY_MODEL_NAME


class PolicyModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: ``nmbrl.load_agent`` on the logged agent file, then ``act`` on each batch."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from nmbrl.loading import load_agent

        self.agent = load_agent(context.artifacts["agent"])

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Actions (``N x A``) for observations (``N x O``), deterministic unless ``params={"deterministic": False}``."""
        observations = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        deterministic = bool((params or {}).get("deterministic", True))
        return self.agent.act(np.asarray(observations, dtype=np.float32), deterministic=deterministic)


def agent_checkpoint(agent: LightningModule, record: dict[str, Any]) -> dict[str, Any]:
    """What ``SACAgent.load_from_checkpoint`` needs and nothing more: weights, hyperparameters, the record."""
    return {
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": {key: value.detach().cpu() for key, value in agent.state_dict().items()},
        "hparams_name": getattr(agent, "_hparams_name", "kwargs"),
        "hyper_parameters": dict(agent.hparams),
        CHECKPOINT_KEY: record,
    }


def log_policy_model(
    agent: LightningModule, record: dict[str, Any], tracking_uri: str, run_id: str, registered_model_name: str | None = None
) -> str:
    """Log ``agent``'s policy as the MLflow model ``policy`` of run ``run_id``; returns its model URI."""
    observation_dim, action_dim = record["observation_dim"], record["action_dim"]
    signature = infer_signature(
        np.zeros((1, observation_dim), dtype=np.float32),
        np.zeros((1, action_dim), dtype=np.float32),
        params={"deterministic": True},
    )
    requirements = [
        f"nmbrl=={nmbrl.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchrl=={torchrl.__version__}",
        f"tensordict=={tensordict.__version__}",
    ]
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / AGENT_FILE
            torch.save(agent_checkpoint(agent, record), path)
            # start_run's exit marks the run FINISHED; the logger sets its real end status after this.
            # Quiet: MLflow warns about type hints, input examples and pickling on every call; the
            # model is a class pickled by reference (it imports nmbrl.serving). And it copies the
            # model's few small files back with progress bars ("Downloading artifacts") on every run.
            with (
                mlflow.start_run(run_id=run_id),
                warnings.catch_warnings(),
                quiet_logger("mlflow.pyfunc"),
                environment_variable("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
            ):
                warnings.simplefilter("ignore", UserWarning)
                info = mlflow.pyfunc.log_model(
                    name=POLICY_MODEL_NAME,
                    python_model=PolicyModel(),
                    artifacts={"agent": str(path)},
                    signature=signature,
                    pip_requirements=requirements,
                    registered_model_name=registered_model_name,
                    metadata={"env": record["env"], "env_steps": record["env_steps"]},
                )
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return info.model_uri


@contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` while inside; as it was after."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Only errors from the logger ``name`` while inside."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
