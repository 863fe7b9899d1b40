"""How far two exact SAC update paths drift apart from one start: float noise against a real difference.

The eager update and the compiled one (losses and gradients in one graph, ``model.compile``) do the
same maths in different float orders. This trains three copies of the config's agent from the same
weights on the same batches and noise:

- eager;
- compiled, as ``cli.py fit`` trains with ``model.compile: true`` on one CPU process;
- eager again, with one weight moved by 1e-6 before the first update: pure float-noise sensitivity.

and prints, every ``--every`` updates, each copy's distance from the eager one's weights (actor and
critics, L2 norm), as a fraction of how far the eager weights have moved. A bug in the compiled
path (a gradient stepped on the wrong weight, stale optimizer state) shows from the first updates;
float noise starts near 1e-7 and grows as SAC's training amplifies it, at the perturbed copy's rate.
Once noise has grown to the size of the moves, runs that differ only in float order are as different
as runs of different seeds, which is why the return at 20k of one seed differs between paths.

    python benchmarks/update_drift.py --config configs/mbpo.yaml --threads 2 --updates 400

The buffer holds synthetic transitions (the drift does not need real ones); about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import build_run, synthetic_transitions  # noqa: E402  (puts the project on the path)

from nmbrl.agent import SACAgent  # noqa: E402
from nmbrl.agent.update import Batch, as_batch  # noqa: E402

PATHS = ("eager", "compiled", "eager, one weight +1e-6")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mbpo.yaml")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CLI's --torch_threads)")
    parser.add_argument("--updates", type=int, default=400)
    parser.add_argument("--every", type=int, default=50, help="print a row every this many updates")
    return parser.parse_args(argv)


def trained_weights(agent: SACAgent) -> list[torch.Tensor]:
    return [t.detach() for t in agent.trainable]


def distance(these: list[torch.Tensor], those: list[torch.Tensor]) -> float:
    return torch.cat([(a - b).flatten() for a, b in zip(these, those, strict=True)]).norm().item()


def train_side_by_side(
    agents: dict[str, SACAgent], batches: Callable[[int], Batch], updates: int, every: int, reference: str = "eager"
) -> list[dict[str, float]]:
    """``updates`` updates of every agent on the same batch and noise; every ``every``, each one's distance from ``reference``'s weights over the distance those moved."""
    optimizers = {name: agent.configure_optimizers() for name, agent in agents.items()}
    for name, agent in agents.items():
        agent.prepare_update(optimizers[name])
    start = [t.clone() for t in trained_weights(agents[reference])]
    rows = []
    for update in range(1, updates + 1):
        batch = batches(update)
        for name, agent in agents.items():
            torch.manual_seed(update)  # the same noise for every agent
            losses, gradients = agent.losses_and_gradients(batch)
            agent.step(losses, optimizers[name], torch.Tensor.backward, gradients)
        if update % every == 0 or update == 1:
            ours = trained_weights(agents[reference])
            moved = distance(ours, start)
            row = {"updates": update, "moved": moved}
            row.update({name: distance(trained_weights(agent), ours) / moved for name, agent in agents.items() if name != reference})
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as root:
        # The same seed builds the same weights: three agents from one start.
        runs = {name: build_run(args.config, args.updates, args.threads, [], root) for name in PATHS}
        for name, run in runs.items():
            run.agent.hparams.compile = name == "compiled"
        with torch.no_grad():
            next(p for p in runs[PATHS[2]].agent.loss_module.parameters() if p.requires_grad).view(-1)[0] += 1e-6
        data = runs["eager"].data
        data.real_buffer.extend(synthetic_transitions(20_000, data.specs.observation_dim, data.specs.action_dim))

        def batches(update: int) -> Batch:
            return as_batch(data.sample_batch())  # one new batch an update, shared by the three agents

        rows = train_side_by_side({name: run.agent for name, run in runs.items()}, batches, args.updates, args.every)
    compiled_path = "in-graph gradients" if runs["compiled"].agent.gradients_in_graph else "autograd's backward"
    print(f"\n{args.config}, {args.threads} threads; compiled: {compiled_path}. Distance from the eager weights / distance they moved:\n")
    print(f"| updates | eager moved (L2) | {PATHS[1]} | {PATHS[2]} |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['updates']} | {row['moved']:.3f} | {row[PATHS[1]]:.1e} | {row[PATHS[2]]:.1e} |")


if __name__ == "__main__":
    main()
