"""SAC updates per second of one config's agent on a device, eager and compiled, and the hours of updates a run needs.

The GPU figures of issue 23. On a CUDA device it times the agent's update on one fixed batch of the
config's size three ways: eager; compiled (``torch.compile``'s default mode, no CUDA graphs); and
compiled with CUDA graphs, which is what ``model.compile`` runs on a GPU. It then projects the hours
that the SAC updates of ``--env-steps`` env steps take at each rate (``data.updates_per_step`` an env
step). World-model training, rollouts, collection and evaluation are not counted. On a CPU it times
eager and the agent's own compiled update, so the script can be checked anywhere.

    python benchmarks/update_rates.py --config configs/mbpo_hopper.yaml --device cuda --env-steps 125000

It prints a markdown table. Each rate is the median of three rounds of ``--updates / 3`` updates,
after 30 untimed ones (CUDA graphs are recorded during those). Every update waits for the device at
the loss check that ``SACAgent.update`` makes, as training does, so the rounds time the device's work.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when run from anywhere
from throughput import build_run, per_second, synthetic_transitions, update_step  # noqa: E402

from nmbrl.agent import SACAgent  # noqa: E402
from nmbrl.agent.update import COMPILABLE, as_batch, sac_losses  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mbpo_hopper.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda (the default where there is one) or cpu")
    parser.add_argument("--env-steps", type=int, default=125_000, help="env steps of the run the projection is for (default 125000)")
    parser.add_argument("--updates", type=int, default=600, help="updates timed for each rate (default 600)")
    parser.add_argument("--threads", type=int, default=2, help="torch's CPU threads (default 2)")
    parser.add_argument("--cli-args", nargs=argparse.REMAINDER, default=[], help="extra config overrides, last")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    if args.env_steps < 1 or args.updates < 3:
        parser.error("--env-steps must be at least 1 and --updates at least 3")
    return args


def prepared(agent: SACAgent, optimizer: torch.optim.Optimizer, way: str) -> None:
    """Prepare ``agent`` to update one ``way``: eager, compiled (no CUDA graphs) or the agent's own compiled update."""
    if way == "eager":
        agent.prepare_update(optimizer, compile=False)
    elif way == "compiled" and agent.device.type == "cuda":
        agent.prepare_update(optimizer, compile=False)
        agent.compiled_losses = torch.compile(partial(sac_losses, kernels=COMPILABLE))  # default mode: no CUDA graphs
        agent.compiled = True
    else:  # the agent's own: CUDA graphs on a GPU, in-graph gradients on one CPU process
        agent.compiled_losses = agent.compiled_gradients = None  # prepare_update compiles only what it has not yet
        agent.prepare_update(optimizer, compile=True)


def ways(device: torch.device) -> dict[str, str]:
    """The updates timed on ``device``, by row label."""
    if device.type == "cuda":
        return {"eager": "eager", "compiled": "compiled, no CUDA graphs", "agent": "compiled with CUDA graphs (model.compile)"}
    return {"eager": "eager", "agent": "compiled (model.compile)"}


def measure(args: argparse.Namespace) -> tuple[dict[str, float], int, str]:
    """Updates/s by row label, the config's updates per env step, and what was timed."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as root:
        run = build_run(args.config, 10, args.threads, args.cli_args, root)
        agent, data = run.agent, run.data
        agent.to(device)
        transitions = synthetic_transitions(data.batch_size, data.specs.observation_dim, data.specs.action_dim)
        batch = as_batch(transitions.to(device))
        optimizer = agent.configure_optimizers()
        rates = {}
        for way, label in ways(device).items():
            prepared(agent, optimizer, way)
            rates[label] = per_second(update_step(agent, optimizer, batch), args.updates)
        sizes = f"hidden {list(agent.hparams.hidden_sizes)}, batch {data.batch_size}, obs {data.specs.observation_dim}, act {data.specs.action_dim}"
        return rates, data.updates_per_step, sizes


def table(rates: dict[str, float], updates_per_step: int, env_steps: int) -> str:
    """The rates and, for each, the hours of the SAC updates of ``env_steps`` env steps; then each rate over eager's."""
    updates = env_steps * updates_per_step
    eager = rates["eager"]
    lines = [
        f"| SAC update | updates/s | hours of updates for {env_steps} env steps ({updates} updates) | over eager |",
        "| --- | --- | --- | --- |",
    ]
    for label, per_second in rates.items():
        lines.append(f"| {label} | {per_second:.1f} | {updates / per_second / 3600:.2f} | {per_second / eager:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    rates, updates_per_step, sizes = measure(args)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"CPU, {args.threads} torch thread(s)"
    print(f"`{args.config}` on {name}: {sizes}, {updates_per_step} updates an env step\n")
    print(table(rates, updates_per_step, args.env_steps))
    print("\nOnly the SAC updates: world-model training, rollouts, collection and evaluation come on top.")


if __name__ == "__main__":
    main()
