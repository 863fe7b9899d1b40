"""Child processes that do one thing at the same moment: the tests of races on a shared file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Each child runs ``setup`` (its imports), says it is ready, waits for the go file, then runs ``action``.
READY_THEN_WAIT = """
go = Path(sys.argv[1])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
"""


def run_together(setup: str, action: str, args: list[str], go: Path, copies: int = 3, cwd: Path | None = None) -> list[str]:
    """Start ``copies`` children on ``args`` (their ``sys.argv[2:]``), let them all go at once, and give each one's output.

    Fails the test if a child exits with an error.
    """
    # Joined, not str.format: the snippets may hold braces (f-strings, dicts).
    code = "\n".join(["import sys, time", "from pathlib import Path", textwrap.dedent(setup), READY_THEN_WAIT, textwrap.dedent(action)])
    command = [sys.executable, "-c", code, str(go), *args]
    children = [subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(copies)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    go.touch()
    outcomes = [child.communicate(timeout=120) for child in children]
    for child, (_, err) in zip(children, outcomes):
        assert child.returncode == 0, err[-2000:]
    return [out for out, _ in outcomes]
