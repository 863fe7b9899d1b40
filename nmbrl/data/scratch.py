"""Scratch folders of a memory-mapped model buffer: one live folder per process, none left behind.

A folder is named after the host and process that own it. It is removed when the buffer moves to
a new one (on resizing), when ``fit`` ends, or, if its process died without cleaning up (a crash,
``kill -9``), by the next run that makes a folder in the same place.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from nmbrl.checkpoints import process_alive

PREFIX = "model_buffer_"


def make_scratch_folder(parent: str | os.PathLike, rank: int) -> str:
    """A new empty folder under ``parent`` for this process, after clearing dead processes' folders."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    remove_orphaned_scratch_folders(parent)
    return tempfile.mkdtemp(prefix=f"{PREFIX}{socket.gethostname()}_pid{os.getpid()}_rank{rank}_", dir=parent)


def remove_orphaned_scratch_folders(parent: str | os.PathLike) -> None:
    """Delete the scratch folders of this host's processes that no longer run."""
    owned_here = f"{PREFIX}{socket.gethostname()}_pid"
    for folder in Path(parent).glob(f"{owned_here}*"):
        pid = folder.name[len(owned_here) :].split("_", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            remove_scratch_folder(folder)


def remove_scratch_folder(folder: str | os.PathLike | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
