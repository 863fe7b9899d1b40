"""A probe for benchmarks: sync mode with every draw on the main generators, as before commit 3741e5c.

Sync mode draws its collection and its world-model retrainings from the roles' own random streams
(``nmbrl.random_streams``). To compare that with drawing everything from the main generators, add
this callback to a run, with ``benchmarks/`` on the path::

    PYTHONPATH=$PWD/benchmarks python benchmarks/concurrent_vs_sync.py --budget 20000 --seeds 12 --threads 1 \\
        --modes sync --sync-args="--trainer.callbacks+=main_generators.MainGenerators" --out runs/main_generators

Building it turns ``RandomStream.active`` into a no-op for the whole process (the CLI builds the
callbacks before the first collection), and the run's log says so. Used for the "Sync mode on the
roles' streams against sync on the main generators" sections of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.callbacks import Callback

from nmbrl.random_streams import RandomStream


@contextmanager
def on_main_generators(stream: RandomStream) -> Iterator[None]:
    yield


class MainGenerators(Callback):
    """Every draw of the run on the main generators: ``RandomStream.active`` does nothing."""

    def __init__(self) -> None:
        RandomStream.active = on_main_generators

    def on_fit_start(self, trainer, pl_module) -> None:
        print("probe: RandomStream.active is a no-op; all draws on the main generators", flush=True)
