"""Checkpoint files: written atomically, found by ``--ckpt_path last``, checked before a run starts.

Every NMBRL checkpoint carries a small ``"nmbrl"`` record (see ``callbacks.RunLifecycle``): the
MLflow run it belongs to and the environment it was trained on. The CLI reads it before building
anything, so a resumed or tested run logs into the same MLflow run and folder, and a checkpoint
of another environment is refused with a clear message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from nmbrl.errors import ConfigError

CHECKPOINT_KEY = "nmbrl"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, syncs it, then renames it.

    A crash or ``kill -9`` mid-write leaves the previous checkpoint intact (Lightning's own save
    goes through a temporary file in the system temp dir, whose final move is a copy when that
    dir is on another filesystem, and is never synced). The temporary file such a crash leaves
    behind is removed by the next save into the same folder.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        sync_folder(path.parent)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files of writers that died mid-save (``.<name>.<pid>.tmp``, pid gone)."""
    for temporary in folder.glob(".*.tmp"):
        pid = temporary.suffixes[-2].lstrip(".") if len(temporary.suffixes) >= 2 else ""
        if pid.isdigit() and not process_alive(int(pid)):
            temporary.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class CheckpointInfo:
    """What the CLI needs to know about a checkpoint before it builds the run."""

    path: Path
    run_id: str | None
    tracking_uri: str | None
    env: str
    observation_dim: int
    action_dim: int
    env_steps: int
    action_repeat: int = 1  # absent from checkpoints written before the setting existed
    action_low: list[float] | None = None  # the action bounds; absent from older checkpoints
    action_high: list[float] | None = None
    world_model_trainer: str | None = None  # the state key of the callback that trained its world model; None: SAC


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Read the ``"nmbrl"`` record of a checkpoint; ConfigError if it is missing, corrupt or foreign."""
    # mmap: tensors stay on disk, so reading the record of a multi-GB checkpoint is cheap.
    checkpoint = read_checkpoint(
        path,
        mmap=True,
        label=f"ckpt_path={str(path)!r}",
        missing_hint="Pass `--ckpt_path last` to resume the latest run of this config's experiment, or the path of a "
        "file in a run folder's checkpoints/ (runs/<experiment id>/<run id>/checkpoints/).",
    )
    return CheckpointInfo(path=Path(path), **checkpoint[CHECKPOINT_KEY], world_model_trainer=world_model_trainer(checkpoint))


def world_model_trainer(checkpoint: dict[str, Any]) -> str | None:
    """The state key of the callback whose state holds a world model (``WorldModelTraining`` and kin), if any."""
    states = checkpoint.get("callbacks", {})
    return next((key for key, state in states.items() if isinstance(state, dict) and "world_model" in state), None)


# What each world-model trainer's state key says about the run that wrote it.
RUN_KINDS = {
    None: "SAC (no world model; configs/sac.yaml)",
    "WorldModelTraining": "sync MBPO (configs/mbpo.yaml and the per-env configs)",
    "WorldModelTrainingProcess": "concurrent MBPO (configs/mbpo_async.yaml)",
}


def run_kind(trainer_key: str | None) -> str:
    return RUN_KINDS.get(trainer_key, f"MBPO with its world model trained by {trainer_key}")


def check_same_run_kind(info: CheckpointInfo, trainer_key: str | None, picked_as_last: str | None = None) -> None:
    """ConfigError if a fit would resume a checkpoint of another algorithm or mode than its config's.

    Lightning would warn and go on: the world model, its optimizer and its schedule would start
    afresh (or be dropped), inside the checkpoint's MLflow run. ``trainer_key`` is the state key of
    the config's world-model trainer (None for SAC); ``picked_as_last`` the experiment that
    ``--ckpt_path last`` searched, if it did.
    """
    if info.world_model_trainer == trainer_key:
        return
    config = info.path.parent.parent / "config.yaml"
    own_config = f"its own config (--config {config})" if config.is_file() else "the config it was trained with"
    searched = (
        f" `--ckpt_path last` took the newest checkpoint of the experiment {picked_as_last!r}, which sync and concurrent "
        "runs of an env share; pass a checkpoint file to resume another run."
        if picked_as_last
        else ""
    )
    raise ConfigError(
        f"ckpt_path={str(info.path)!r} was written by {run_kind(info.world_model_trainer)}, but this config runs "
        f"{run_kind(trainer_key)}. A run keeps its algorithm and mode when resumed: its world model's training would "
        f"otherwise start afresh or be dropped. Resume it with {own_config}, or leave out --ckpt_path for a new run.{searched}"
    )


def read_checkpoint(
    path: str | os.PathLike,
    mmap: bool = False,
    label: str | None = None,
    missing_hint: str = "Pass a checkpoint written by `cli.py fit` (runs/<experiment id>/<run id>/checkpoints/last.ckpt).",
) -> dict[str, Any]:
    """An NMBRL checkpoint file, loaded on the CPU; ConfigError (naming it as ``label``) if it is missing, corrupt or foreign.

    ``weights_only``: NMBRL checkpoints hold only tensors and plain values (RNG states included).
    """
    path = Path(path)
    label = label or repr(str(path))
    if not path.is_file():
        raise ConfigError(f"{label}: no such checkpoint file. {missing_hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise ConfigError(
            f"{label} cannot be read as a checkpoint ({type(error).__name__}: {error}). "
            f"The file is corrupt or truncated: pick another checkpoint from {path.parent}."
        ) from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise ConfigError(
            f"{label} is not an NMBRL checkpoint (it has no {CHECKPOINT_KEY!r} record). "
            "Pass a checkpoint written by `cli.py fit`."
        )
    return checkpoint


def find_last_checkpoint(root_dir: str | os.PathLike, experiment_id: str | None) -> Path:
    """The newest ``last.ckpt`` among the run folders of an experiment, for ``--ckpt_path last``."""
    pattern = f"{experiment_id}/*/checkpoints/last*.ckpt" if experiment_id is not None else "**/checkpoints/last*.ckpt"
    candidates = [p for p in Path(root_dir).glob(pattern) if not p.name.startswith(".")]
    if not candidates:
        raise ConfigError(
            f"ckpt_path='last': no checkpoint of this experiment under {root_dir} (looked for {pattern}). "
            "Train first, or pass the path of a checkpoint file."
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def check_same_env(info: CheckpointInfo, env: str, observation_dim: int, action_dim: int, action_repeat: int = 1) -> None:
    """ConfigError if the checkpoint's networks do not fit the configured environment, or learned another action repeat."""
    if (info.observation_dim, info.action_dim) != (observation_dim, action_dim):
        raise ConfigError(
            f"ckpt_path={str(info.path)!r} was trained on {info.env!r} (observation size {info.observation_dim}, "
            f"action size {info.action_dim}), but the config asks for {env!r} (observation size {observation_dim}, "
            f"action size {action_dim}). Use the config the checkpoint was trained with (its run folder holds "
            f"config.yaml), or set --data.env {info.env}."
        )
    if info.action_repeat != action_repeat:
        raise ConfigError(
            f"ckpt_path={str(info.path)!r} was trained with action_repeat={info.action_repeat}, but the config asks for "
            f"action_repeat={action_repeat}: its agent and world model learned transitions of {info.action_repeat} env "
            f"steps. Set --data.action_repeat {info.action_repeat}."
        )


def take_configured_hyperparameters(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> list[str]:
    """Give a saved optimizer state ``optimizer``'s hyperparameters (lr, betas, ...), group by group; return the changes.

    ``Optimizer.load_state_dict`` restores the saved hyperparameters with the state, so a resumed
    run would keep the learning rate it started with, whatever its config says now. Here the
    config's settings win, and the state (moment estimates, step counts) is kept. Changes read
    ``lr 0.0003 -> 0.0001``. With another number of groups nothing is changed, and loading fails as it would.
    """
    groups = saved.get("param_groups", [])
    if len(groups) != len(optimizer.param_groups):
        return []
    changes = []
    for index, (old, new) in enumerate(zip(groups, optimizer.param_groups)):
        for key, value in new.items():
            if key == "params" or key not in old or same_setting(old[key], value):
                continue
            label = key if len(groups) == 1 else f"{key} (group {index})"
            changes.append(f"{label} {old[key]} -> {value}")
            old[key] = value
    return changes


def same_setting(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):  # a tensor lr (capturable optimizers)
        return torch.equal(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    return a == b
