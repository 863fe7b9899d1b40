"""Checks of where a run will write, made before anything is built or trained."""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from nmbrl.errors import ConfigError
from nmbrl.tracking import sqlite_path

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"


def check_writable_folder(folder: str | Path, what: str, flag: str) -> None:
    """ConfigError unless files can be written in ``folder``, or it can be created.

    Probes the folder, or its nearest existing parent, with a temporary file; creates nothing.
    """
    existing = nearest_existing(Path(folder))
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(
            f"cannot write to the {what} {str(folder)!r} ({error.strerror or error}). "
            f"Pass a folder you can write to with {flag}, or fix its permissions."
        ) from None


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """ConfigError unless the MLflow store at ``uri`` can be used: a writable sqlite file or a reachable server."""
    sqlite_file = sqlite_path(uri)
    if sqlite_file is not None:
        check_writable_folder(sqlite_file.parent, "MLflow store folder", "--trainer.logger.init_args.tracking_uri")
        return
    if uri.startswith(("http://", "https://")):
        check_server(uri, timeout_s)
        return
    if uri.startswith("file:") or ("://" not in uri and ("/" in uri or uri.startswith("."))):
        raise ConfigError(
            f"tracking_uri={uri!r}: MLflow no longer reads folder ('file') stores. Use a database, e.g. "
            f"--trainer.logger.init_args.tracking_uri {DEFAULT_TRACKING_URI}."
        )


def check_server(uri: str, timeout_s: float) -> None:
    """An MLflow server answers ``/health``; any HTTP answer at all proves it is reachable."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"tracking_uri={uri!r}: cannot reach the MLflow server ({reason}). Start it (e.g. `mlflow server "
            f"--backend-store-uri {DEFAULT_TRACKING_URI} --port 5000`), fix the address, or log locally with "
            f"--trainer.logger.init_args.tracking_uri {DEFAULT_TRACKING_URI}."
        ) from None


def transition_bytes(observation_dim: int, action_dim: int) -> int:
    """Bytes of one stored transition (``TRANSITION_KEYS``): float32 observation, action, next
    observation and reward, and the done and terminated flags."""
    return 4 * (2 * observation_dim + action_dim + 1) + 2


#: Memory one imagined step of a branched rollout takes while the rollout runs, in stored transitions
#: (``transition_bytes``): the steps as TensorDicts (with the policy's outputs, the model's uncertainty
#: and the flags), their stacked copy, the masked copy and the selection of stored keys. Measured as
#: the growth of the process's peak resident memory with the rollout's size, from 40,000 to 100,000
#: start states on Hopper (3.8) and 20,000 to 60,000 on Ant (3.1), horizon 15, no terminations, each
#: size in a fresh process. A first rollout also costs a fixed 0.2 to 0.4 GB, not counted here.
ROLLOUT_TRANSITIONS_PER_STEP = 4


def rollout_bytes(batch_size: int, horizon: int, observation_dim: int, action_dim: int) -> int:
    """Working memory of one branched rollout of ``batch_size`` start states and ``horizon`` steps (at most)."""
    return batch_size * horizon * ROLLOUT_TRANSITIONS_PER_STEP * transition_bytes(observation_dim, action_dim)


def check_buffer_room(
    real_bytes: int, model_bytes: int, model_buffer_dir: str | None, processes: int, fixes: str, working_bytes: int = 0
) -> None:
    """ConfigError unless the replay buffers, at the largest this run makes them, fit in the memory
    (and for a memory-mapped model buffer, the disk) available now, with ``working_bytes`` beside
    them (the longest branched rollout's working memory).

    The buffers fill over hours, and the rollouts lengthen with the schedule. A run that outgrows
    the machine would be killed then, for memory or with SIGBUS on a full disk under a memory-mapped
    buffer, and lose what it trained since its last checkpoint. ``processes`` training processes
    (DDP ranks) each hold their own buffers and roll out their own batches.
    """
    in_memory = processes * (real_bytes + (model_bytes if model_buffer_dir is None else 0) + working_bytes)
    available = available_memory()
    if available is not None and in_memory > available:
        rollout = f" ({gigabytes(processes * working_bytes)} of it the longest rollout's working memory)" if working_bytes else ""
        raise ConfigError(
            f"the replay buffers would grow to {gigabytes(in_memory)} of memory in this run{rollout}, but "
            f"{gigabytes(available)} is available. {fixes}"
        )
    if model_buffer_dir is not None:
        free = shutil.disk_usage(nearest_existing(Path(model_buffer_dir))).free
        if processes * model_bytes > free:
            raise ConfigError(
                f"the memory-mapped model buffer would grow to {gigabytes(processes * model_bytes)} in "
                f"model_buffer_dir={model_buffer_dir!r}, but its disk has {gigabytes(free)} free. {fixes}"
            )


def available_memory() -> int | None:
    """Bytes of memory available for new allocations (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB"
