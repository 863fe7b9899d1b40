"""Checks of the run folder and the MLflow store, before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmbrl.errors import ConfigError
from nmbrl.preflight import check_tracking_uri, check_writable_folder


def test_a_folder_that_can_be_created_passes_and_is_not_created(tmp_path: Path) -> None:
    check_writable_folder(tmp_path / "a" / "b", "run folder root", "--flag")
    assert not (tmp_path / "a").exists()


def test_folder_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot write to the run folder root .*--flag"):
        check_writable_folder(tmp_path / "file" / "runs", "run folder root", "--flag")


def test_tracking_uris(tmp_path: Path) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    with pytest.raises(ConfigError, match="cannot write to the MLflow store folder"):
        (tmp_path / "file").write_text("x")
        check_tracking_uri(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")
    check_tracking_uri("databricks")  # other schemes are left to MLflow
    with pytest.raises(ConfigError, match="no longer reads folder"):
        check_tracking_uri("./mlruns")
    with pytest.raises(ConfigError, match="cannot reach the MLflow server"):
        check_tracking_uri("http://127.0.0.1:9", timeout_s=2)
