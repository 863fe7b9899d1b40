"""Checks of where a run will write, made before anything is built or trained."""

from __future__ import annotations

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
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
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
