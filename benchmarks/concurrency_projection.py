"""Where concurrent mode starts to pay: both modes' wall-clock for one run of a config, on 2 to 16 cores.

A simple model built from measured costs, not a simulation of the scheduler. Its inputs are two
``throughput.py --json`` records of the same config, with 1 and with 2 torch threads, each giving
the seconds of every phase of one full run (``throughput.project``): random exploration ``E``,
the SAC loop ``L`` (updates, batch sampling and collecting the policy's env steps, of which
collection takes ``C``), world-model retraining ``W``, branched rollouts ``R`` and evaluation ``V``.
``X(t)`` is a phase's seconds with ``t`` threads; more than 2 threads were never measured, and the
CLI's ``--torch_threads auto`` gives a process 2 at most, so a process never has more here.

- **Sync** (``configs/mbpo.yaml``) runs the phases one after another in one process with
  ``a = min(cores, 2)`` threads: ``E + L(a) + W(a) + R(a) + V(a)``. Cores beyond 2 sit idle.
- **Concurrent** (``configs/mbpo_async.yaml``): the agent (``a`` threads) does the updates,
  rollouts and evaluations, ``A(a) = L(a) - C + R(a) + V(a)``; the collector (1 thread, lowest
  priority) does ``E + C``; the world-model role (``w`` threads, the config's 1 unless
  ``--world-model-threads``) does ``W(w)``. The agent never waits for a retraining (only its
  rollouts use a model that may be older). Where the cores hold the agent's threads beside the
  role's, the run takes ``max(A(a), E + C)``. Where they do not, the agent drops to
  ``l = max(1, cores - w)`` threads while a retraining runs (``ThreadLending``), so during ``W(w)``
  it progresses at ``1 / A(l)`` of its work per second instead of ``1 / A(a)``:
  ``A(a) + W(w) * (1 - A(a) / A(l))``. The collector's share of the cores is left out: at the
  lowest priority it takes what the agent leaves idle. ``lag = W(w) / agent time`` above 1
  means each retraining takes longer than the env steps between two of them, so the rollouts'
  model ages; the table shows it.
- **Lockstep** (``--collection.lockstep true``): sync's order, the world model trained in its
  process with ``w`` threads while everything else waits: ``E + L(a) + W(w) + R(a) + V(a)``.

The 2-core estimates can be checked against real runs of both modes (``concurrent_vs_sync.py``):
``--measured-sync`` and ``--measured-concurrent`` (minutes) add them to the table.

Example:

    python benchmarks/throughput.py --config configs/mbpo.yaml --threads 1 --json /tmp/t1.json 2>/dev/null
    python benchmarks/throughput.py --config configs/mbpo.yaml --threads 2 --json /tmp/t2.json 2>/dev/null
    python benchmarks/concurrency_projection.py /tmp/t1.json /tmp/t2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

PHASES = {
    "explore": "random exploration",
    "loop": "SAC loop (with collection)",
    "retrain": "world-model retraining",
    "rollouts": "branched rollouts",
    "evaluation": "evaluation",
}


@dataclass(frozen=True)
class Costs:
    """Seconds of each phase of one full run, with 1 and with 2 torch threads (index 0 and 1)."""

    explore: float
    collection: float
    loop: tuple[float, float]
    retrain: tuple[float, float]
    rollouts: tuple[float, float]
    evaluation: tuple[float, float]

    @classmethod
    def of(cls, one: dict, two: dict, retrain_epochs: float | None = None) -> Costs:
        """From the 1- and 2-thread records; ``retrain_epochs`` rescales retraining to that many epochs each
        (it is linear in them), for when a real run's early stopping chose another count than the records."""
        if (one["config"], one["cli_args"]) != (two["config"], two["cli_args"]) or (one["threads"], two["threads"]) != (1, 2):
            raise SystemExit("error: give the 1-thread and the 2-thread record of the same config, in that order.")
        both = {name: (one["phases_s"][phase], two["phases_s"][phase]) for name, phase in PHASES.items()}
        if retrain_epochs is not None:
            both["retrain"] = tuple(seconds * retrain_epochs / record["retrain_epochs"] for seconds, record in zip(both["retrain"], (one, two)))
        return cls(explore=both["explore"][0], collection=one["collection_s"], **{k: v for k, v in both.items() if k != "explore"})

    def agent(self, t: int) -> float:
        """The agent's own work in concurrent mode: the loop without collection, rollouts, evaluation."""
        return self.loop[t - 1] - self.collection + self.rollouts[t - 1] + self.evaluation[t - 1]


@dataclass(frozen=True)
class Estimate:
    sync: float
    concurrent: float
    lockstep: float
    lag: float  # world-model retraining time over the agent's time (above 1: the model ages)


def estimate(costs: Costs, cores: int, world_model_threads: int = 1) -> Estimate:
    a, w = min(cores, 2), world_model_threads
    sync = costs.explore + costs.loop[a - 1] + costs.retrain[a - 1] + costs.rollouts[a - 1] + costs.evaluation[a - 1]
    agent = costs.agent(a)
    lent = max(1, min(a, cores - w))  # nmbrl.concurrent.cores.threads_beside
    if lent < a:
        agent += costs.retrain[w - 1] * (1 - costs.agent(a) / costs.agent(lent))
    concurrent = max(agent, costs.explore + costs.collection)
    lockstep = costs.explore + costs.loop[a - 1] + costs.retrain[w - 1] + costs.rollouts[a - 1] + costs.evaluation[a - 1]
    return Estimate(sync, concurrent, lockstep, costs.retrain[w - 1] / agent)


def table(costs: Costs, cores: list[int], measured: dict[str, float | None], world_model_threads: int = 1) -> str:
    lines = [
        "| cores | sync (min) | concurrent (min) | concurrent / sync | lockstep (min) | world-model lag |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n in cores:
        e = estimate(costs, n, world_model_threads)
        lines.append(
            f"| {n} | {e.sync / 60:.1f} | {e.concurrent / 60:.1f} | {e.concurrent / e.sync:.2f} | {e.lockstep / 60:.1f} | {e.lag:.2f} |"
        )
    if any(v is not None for v in measured.values()):
        cells = [f"{measured[m]:.1f}" if measured[m] is not None else "–" for m in ("sync", "concurrent")]
        lines.append(f"| 2, measured | {cells[0]} | {cells[1]} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("one", type=Path, help="throughput.py --json record with --threads 1")
    parser.add_argument("two", type=Path, help="the same config's record with --threads 2")
    parser.add_argument("--cores", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--world-model-threads", type=int, choices=[1, 2], default=1, help="the world-model role's threads")
    parser.add_argument(
        "--retrain-epochs", type=float, default=None, help="world-model epochs per retraining, if not the records' (say, a real run's mean)"
    )
    parser.add_argument("--measured-sync", type=float, default=None, help="minutes of a real 2-core sync run, to compare")
    parser.add_argument("--measured-concurrent", type=float, default=None, help="minutes of a real 2-core concurrent run")
    args = parser.parse_args(argv)
    one, two = json.loads(args.one.read_text()), json.loads(args.two.read_text())
    costs = Costs.of(one, two, args.retrain_epochs)
    measured = {"sync": args.measured_sync, "concurrent": args.measured_concurrent}
    epochs = args.retrain_epochs if args.retrain_epochs is not None else one["retrain_epochs"]
    print(
        f"`{one['config']}` {' '.join(one['cli_args'])}, {one['env_steps']} env steps, {one['retrainings']} retrainings "
        f"of {epochs:g} world-model epochs\n"
    )
    print(table(costs, args.cores, measured, args.world_model_threads))


if __name__ == "__main__":
    sys.exit(main())
