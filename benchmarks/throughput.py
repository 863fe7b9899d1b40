"""Where the time of an MBPO run goes: the cost of each phase of one config, measured in isolation.

Builds the agent, data module and callbacks from a config exactly as ``cli.py fit`` does, fills
the buffers with synthetic transitions of the right shapes (costs do not depend on the values),
and times each phase on its own:

- the compute ceiling: 256x256 matrix products per second, over the 16 such products (forward
  equivalents at batch 256) that one SAC update of 2x256 networks needs;
- SAC updates/s: the bare update on one fixed batch (the agent's own, TorchRL's ``SACLoss`` +
  ``SoftUpdate`` it replaces, and the compiled one with ``--compile`` or where the config compiles
  it, ``model.compile``), batch sampling alone, and
  the real Lightning training loop (an env step's batches sampled together, one collected env
  step per ``updates_per_step`` updates, hooks, progress bar);
- the peer: Stable-Baselines3's own ``SAC.train`` with the same network sizes, batch and
  threads (``pip install -e ".[bench]"``; the row is left out without it);
- env steps/s of collection, random and with the policy;
- seconds per world-model epoch at two real-buffer sizes (the cost is linear in between);
- seconds per branched rollout at horizon 1 and at the schedule's longest horizon;
- seconds per evaluation (the config's episodes, run side by side as in training).

It prints a markdown table and projects the wall-clock of one full run of the config from the
figures, with world-model retraining at the config's epoch cap unless ``--retrain-epochs`` says
otherwise (the cap is an upper bound: early stopping often ends a retraining sooner).

and the ratios between them. Example (about 3 minutes on 2 cores; Lightning's own output goes to stderr):

    python benchmarks/throughput.py --config configs/mbpo.yaml --threads 1 2>/dev/null

On a machine shared with other jobs, ``--clock cpu`` times with this process's CPU time instead
of wall-clock time: with one torch thread that is close to what the run would take on a core of
its own, and much steadier than wall-clock time under load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import torch
from lightning.pytorch import Callback
from tensordict import TensorDict, TensorDictBase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
import nmbrl.envs  # noqa: F401  (sets MUJOCO_GL before anything imports MuJoCo)
from callbacks import BranchedRollouts, Evaluation, WorldModelTraining
from nmbrl.agent import DivergenceGuard
from nmbrl.agent.update import as_batch
from nmbrl.cli import NMBRLCLI
from nmbrl.data import model_buffer_capacity
from nmbrl.data.buffers import make_replay_buffer
from nmbrl.data.collect import make_collector
from nmbrl.envs import make_env
from nmbrl.envs.termination import termination_rule
from nmbrl.evaluation import evaluate_policy
from nmbrl.rollouts import branched_rollout, rollout_horizon

MBPO_CALLBACKS = (WorldModelTraining, BranchedRollouts, Evaluation)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set by --clock


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mbpo.yaml")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CLI's --torch_threads)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall-clock time, or this process's CPU time")
    parser.add_argument("--updates", type=int, default=400, help="SAC updates timed in each SAC measurement")
    parser.add_argument("--compile", action="store_true", help="also time the compiled update (about 5-30 s to compile); always timed where the config compiles it")
    parser.add_argument("--skip-peer", action="store_true", help="leave out the Stable-Baselines3 row")
    parser.add_argument("--real", type=int, default=20_000, help="real transitions in the buffer (late-run size)")
    parser.add_argument("--imagined", type=int, default=100_000, help="imagined transitions in the model buffer")
    parser.add_argument("--collect-steps", type=int, default=300, help="env steps timed for each collection mode")
    parser.add_argument("--wm-epochs", type=int, default=2, help="world-model epochs timed at each buffer size")
    parser.add_argument(
        "--retrain-epochs", type=float, default=None,
        help="world-model epochs per retraining in the projection (default: the config's cap, an upper bound)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and the projection here (for concurrency_projection.py)")
    parser.add_argument("--cli-args", nargs=argparse.REMAINDER, default=[], help="extra config overrides, last")
    return parser.parse_args(argv)


@dataclass
class Run:
    """The objects of one configured run, built by the CLI without fitting."""

    cli: NMBRLCLI
    world_model_training: WorldModelTraining | None
    rollouts: BranchedRollouts | None
    evaluation: Evaluation | None
    max_epochs: int  # of the config's trainer
    random_steps: int  # of the config's data module
    wm_epoch_cap: int  # of the config's world model

    @property
    def data(self):
        return self.cli.datamodule

    @property
    def agent(self):
        return self.cli.model


def build_run(config: str, updates: int, threads: int, extra: list[str], root: str) -> Run:
    """The CLI's objects for ``config``; the trainer stops after ``updates`` updates and logs nowhere."""
    args = ["--config", config, "--trainer.logger", "false", "--trainer.default_root_dir", root,
            "--trainer.max_steps", str(updates), "--torch_threads", str(threads), *extra]  # fmt: skip
    cli = NMBRLCLI(args=args, run=False)
    found = {kind: next((c for c in cli.trainer.callbacks if isinstance(c, kind)), None) for kind in MBPO_CALLBACKS}
    cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, MBPO_CALLBACKS)]
    cli.datamodule.setup("fit")
    cli.model.build(cli.datamodule.specs)
    training = found[WorldModelTraining]
    if training is None:
        raise SystemExit(
            f"error: {config} has no model_training, and this benchmark measures MBPO's phases (world model, rollouts) and "
            "projects an MBPO run: give it an MBPO config, such as configs/mbpo.yaml."
        )
    config = (cli.trainer.max_epochs, cli.datamodule.random_steps, training.world_model.hparams.max_epochs)
    return Run(cli, *found.values(), *config)


def synthetic_transitions(n: int, observation_dim: int, action_dim: int) -> TensorDictBase:
    """``n`` transitions with the keys and dtypes of real ones."""
    observation = torch.randn(n, observation_dim)
    return TensorDict(
        {
            "observation": observation,
            "action": torch.rand(n, action_dim) * 2 - 1,
            "next": {
                "observation": observation + 0.1 * torch.randn(n, observation_dim),
                "reward": torch.rand(n, 1),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    """Seconds of one call of ``fn``, median over ``repeats``."""
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return sorted(times)[len(times) // 2]


def per_second(fn: Callable[[], object], calls: int, warmup: int = 30) -> float:
    """Calls of ``fn`` per second: the median of three rounds of ``calls / 3``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    chunk = max(1, calls // 3)
    return chunk / timed(lambda: call(fn, chunk), repeats=3)


def call(fn: Callable[[], object], times: int) -> None:
    """``fn`` called ``times`` times, each result dropped at once.

    Kept in a list, the results of the ceiling's products (256 KiB each) made every round allocate
    fresh memory and fault its pages in: the probe then measured 5400-8400 products/s on a machine
    where they run at about 10000/s.
    """
    for _ in range(times):
        fn()


# --- SAC -----------------------------------------------------------------------------------


def matmul_product(size: int = 256) -> Callable[[], object]:
    """One ``size x size`` by ``size x size`` matrix product, the ceiling's unit, into the same output each time."""
    a, b, out = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    return lambda: torch.mm(a, b, out=out)


def paired_rates(probe: Callable[[], object], update: Callable[[], object], updates: int, rounds: int = 5) -> tuple[float, float, float]:
    """Matrix products/s, updates/s and the median over rounds of updates/s over the ceiling (products/s / 16).

    The two are timed in alternating rounds, ``updates / rounds`` updates and the products of as
    long a time each, so that the machine's drifts in speed (up to 2x within an hour) touch both
    alike.
    """
    for _ in range(50):
        probe()
    for _ in range(30):
        update()
    chunk = max(1, updates // rounds)
    probe_rates, update_rates = [], []
    for _ in range(rounds):
        update_rates.append(chunk / timed(lambda: call(update, chunk)))
        products = max(50, round(16 * chunk * 2))  # about as long as the updates, at half the ceiling
        probe_rates.append(products / timed(lambda: call(probe, products)))
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    return median(probe_rates), median(update_rates), median([u / (p / 16) for p, u in zip(probe_rates, update_rates)])


def library_sac_step(run: Run) -> Callable[[], None]:
    """One TorchRL ``SACLoss`` + ``SoftUpdate`` update on a fixed batch, as in TorchRL's SAC example."""
    agent, batch = run.agent, run.data.sample_batch()
    optimizer = agent.configure_optimizers()

    def step() -> None:
        losses = agent.loss_module(batch.clone(False))
        loss = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        agent.target_update.step()

    return step


def agent_sac_step(run: Run, compile: bool = False) -> Callable[[], None]:
    """One update as ``SACAgent.update`` makes it, on a fixed batch, without Lightning: eager, or compiled as the config's run compiles it."""
    agent, batch = run.agent, as_batch(run.data.sample_batch())
    optimizer = agent.configure_optimizers()
    agent.prepare_update(optimizer, compile=compile)
    return update_step(agent, optimizer, batch)


def update_step(agent, optimizer: torch.optim.Optimizer, batch) -> Callable[[], None]:
    """One update of ``agent`` on ``batch`` as ``SACAgent.update`` makes it, with its check of the losses (its one sync), without Lightning."""

    def step() -> None:
        losses, gradients = agent.losses_and_gradients(batch)
        DivergenceGuard.values({"critic": losses.critic, "actor": losses.actor, "alpha": losses.alpha_loss})
        agent.step(losses, optimizer, torch.Tensor.backward, gradients)

    return step


def peer_sac_rate(run: Run, updates: int) -> float | None:
    """Stable-Baselines3 ``SAC.train`` updates/s with the config's sizes and batch; None without SB3."""
    try:
        from stable_baselines3 import SAC
        from stable_baselines3.common.logger import configure
    except ImportError:
        return None
    specs, data, threads = run.data.specs, run.data, torch.get_num_threads()
    low, high = specs.action_spec.space.low.numpy(), specs.action_spec.space.high.numpy()
    env = SpacesOnly(gym.spaces.Box(-10, 10, (specs.observation_dim,)), gym.spaces.Box(low, high))
    hidden = run.agent.hparams.hidden_sizes
    model = SAC("MlpPolicy", env, batch_size=data.batch_size, policy_kwargs={"net_arch": hidden}, device="cpu", seed=0)
    model.set_logger(configure(None, []))
    torch.set_num_threads(threads)  # the same threads as every other row
    rows = synthetic_transitions(10_000, specs.observation_dim, specs.action_dim)
    for row in range(len(rows)):
        t = rows[row]
        model.replay_buffer.add(
            t["observation"].numpy(), t["next", "observation"].numpy(), t["action"].numpy(),
            t["next", "reward"].numpy(), t["next", "done"].numpy(), [{}],
        )  # fmt: skip
    return per_second(lambda: model.train(gradient_steps=1, batch_size=data.batch_size), updates)


class SpacesOnly(gym.Env):
    """Just the spaces SB3 builds its networks from; it is never stepped here."""

    def __init__(self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box) -> None:
        self.observation_space, self.action_space = observation_space, action_space


class LoopTimer(Callback):
    """Times the training loop's agent updates from batch ``warmup`` (one env step's updates) to the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.first_update = self.updates = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.start, self.first_update = clock(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.end = clock()
        self.updates = trainer.global_step - self.first_update


def lightning_loop_rate(run: Run, warmup: int = 4) -> float:
    """Updates/s of ``trainer.fit`` without the MBPO callbacks: sampling, collection, hooks and all."""
    timer = LoopTimer(warmup)
    run.cli.trainer.callbacks.append(timer)
    run.data.random_steps = 0
    run.data.env_steps = 0  # an epoch runs up to data.epoch_end env steps: start it from zero
    run.cli.trainer.fit(run.agent, datamodule=run.data)
    return timer.updates / (timer.end - timer.start)


# --- the other phases -----------------------------------------------------------------------


def collection_rates(run: Run, steps: int) -> tuple[float, float]:
    """Env steps/s of the collector used by the data module: uniform random, then with the policy."""
    buffer = make_replay_buffer(2 * steps + 2)
    collector, _ = make_collector(run.data.env, run.agent.policy, buffer, steps, torch.device("cpu"))
    iterator = iter(collector)
    random_rate = per_second(lambda: next(iterator), steps - 10, warmup=10)
    policy_rate = per_second(lambda: next(iterator), steps, warmup=10)
    collector.shutdown()
    repeat = run.data.action_repeat  # each collector frame is one transition of `repeat` env steps
    return random_rate * repeat, policy_rate * repeat


def world_model_epoch_seconds(run: Run, sizes: list[int], epochs: int) -> dict[int, float]:
    """Seconds of one world-model training epoch (holdout check included) per real-buffer size."""
    world_model = run.world_model_training.world_model
    world_model.build(run.data.specs, termination_rule(run.data.env_name))
    world_model.hparams.max_epochs, world_model.hparams.patience = epochs, 10**9
    specs = run.data.specs
    return {n: timed(lambda: world_model.fit_transitions(synthetic_transitions(n, specs.observation_dim, specs.action_dim))) / epochs for n in sizes}


def rollout_seconds(run: Run, horizon: int) -> float:
    """Seconds of one branched rollout of the config's batch size, writing into the model buffer included."""
    rollouts, data = run.rollouts, run.data
    world_model = run.world_model_training.world_model
    start = synthetic_transitions(rollouts.batch_size, data.specs.observation_dim, data.specs.action_dim)
    capacity = model_buffer_capacity(horizon, rollouts.batch_size, data.epoch_length, rollouts.every, rollouts.retain_epochs)
    buffer = make_replay_buffer(capacity)

    def rollout() -> None:
        buffer.extend(branched_rollout(world_model, data.env, run.agent.policy, start, horizon).cpu())

    rollout()  # warm-up
    return timed(rollout)


def evaluation_seconds(run: Run) -> float:
    evaluation, data = run.evaluation, run.data
    env = make_env(data.env_name, seed=data.eval_seed, num_envs=evaluation.episodes, action_repeat=data.action_repeat)
    return timed(lambda: evaluate_policy(env, run.agent.policy, data.transitions(evaluation.max_episode_steps)))


# --- projection -----------------------------------------------------------------------------


@dataclass
class Figures:
    matmul: float  # 256^3 products per second
    library_sac: float
    bare_sac: float
    compiled_sac: float | None
    peer_sac: float | None
    sampling: float
    loop: float
    collect_random: float
    collect_policy: float
    wm_epoch: dict[int, float]
    rollout: dict[int, float]
    evaluation: float
    loop_compiled: bool = False  # the loop ran the compiled update (the config's model.compile)
    ceiling_ratio: float | None = None  # the loop's bare update over the ceiling, timed in alternating rounds
    compiled_gradients: str = ""  # how the compiled update got its gradients: "in-graph gradients" or "autograd's backward"

    @property
    def loop_update(self) -> float:
        """The bare rate of the update the loop runs: compiled if the config compiles it."""
        return self.compiled_sac if self.loop_compiled else self.bare_sac


def interpolate(points: dict[int, float], x: float) -> float:
    """The line through the two ``points`` (x -> y), evaluated at ``x``."""
    (x0, y0), (x1, y1) = sorted(points.items())
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def retraining_points(run: Run) -> list[tuple[int, int]]:
    """(env steps, epoch) of each retraining and rollout of a full run: the first update, then every ``every`` steps."""
    data, every, random_steps = run.data, run.world_model_training.every, run.random_steps
    end = random_steps + run.max_epochs * data.epoch_length
    first = random_steps + data.action_repeat  # the first transition after exploration
    points = [first] + list(range((first // every + 1) * every, end + 1, every))
    return [(s, (s - first) // data.epoch_length) for s in points]


def project(run: Run, f: Figures, retrain_epochs: float) -> dict[str, float]:
    """Seconds of each phase in one full run of the config, with ``retrain_epochs`` epochs per retraining."""
    data = run.data
    epochs = run.max_epochs
    points = retraining_points(run)
    schedule = run.rollouts.schedule
    return {
        "random exploration": run.random_steps / f.collect_random,
        "SAC loop (with collection)": epochs * data.epoch_length // data.action_repeat * data.updates_per_step / f.loop,
        # The real buffer holds one transition per action_repeat env steps.
        "world-model retraining": sum(
            retrain_epochs * interpolate(f.wm_epoch, steps // data.action_repeat) for steps, _ in points
        ),
        "branched rollouts": sum(interpolate(f.rollout, rollout_horizon(epoch, schedule)) for _, epoch in points),
        "evaluation": epochs * f.evaluation,
    }


def print_report(run: Run, f: Figures, args: argparse.Namespace) -> None:
    data = run.data
    lo, hi = sorted(f.wm_epoch)
    h_lo, h_hi = sorted(f.rollout)
    cap = run.wm_epoch_cap
    retrain_epochs = args.retrain_epochs or cap
    cap_words = "uncapped: early stopping decides" if cap is None else f"the cap is {cap}"
    rows = [
        ("256x256 matrix products (the ceiling: 16 per update)", f"{f.matmul:.0f}/s, ceiling {f.matmul / 16:.0f} updates/s"),
        ("SAC update, TorchRL SACLoss + SoftUpdate (fixed batch)", f"{f.library_sac:.1f} updates/s"),
        ("SAC update, the agent's (fixed batch)", f"{f.bare_sac:.1f} updates/s"),
        *([(f"SAC update, the agent's, compiled{', ' + f.compiled_gradients if f.compiled_gradients else ''} (fixed batch)", f"{f.compiled_sac:.1f} updates/s")] if f.compiled_sac else []),
        *([("SAC update, Stable-Baselines3 SAC.train (peer)", f"{f.peer_sac:.1f} updates/s")] if f.peer_sac else []),
        (f"batch sampling + mixing (real_ratio {data.real_ratio}), an env step's {data.updates_per_step} at once", f"{f.sampling:.0f} batches/s"),
        (f"SAC update, Lightning loop (sampling, collection, hooks){', compiled' if f.loop_compiled else ''}", f"{f.loop:.1f} updates/s"),
        ("collection, random policy", f"{f.collect_random:.0f} env steps/s"),
        ("collection, agent policy", f"{f.collect_policy:.0f} env steps/s"),
        (f"world-model epoch, {lo} real transitions", f"{f.wm_epoch[lo]:.2f} s"),
        (f"world-model epoch, {hi} real transitions", f"{f.wm_epoch[hi]:.2f} s"),
        (f"world-model retraining at {retrain_epochs:g} epochs ({cap_words}), {hi} real", f"{retrain_epochs * f.wm_epoch[hi]:.1f} s"),
        (f"branched rollout, {run.rollouts.batch_size} states, horizon {h_lo}", f"{f.rollout[h_lo]:.2f} s"),
        (f"branched rollout, {run.rollouts.batch_size} states, horizon {h_hi}", f"{f.rollout[h_hi]:.2f} s"),
        (f"evaluation ({run.evaluation.episodes} episodes of {run.evaluation.max_episode_steps} steps)", f"{f.evaluation:.1f} s"),
    ]
    print(f"\n`{args.config}`, {args.threads} torch thread(s), {args.clock} clock, load average {os.getloadavg()[0]:.2f}\n")
    print("| phase | cost |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    projection = project(run, f, retrain_epochs)
    print(f"\nProjected full run ({retrain_epochs:g} world-model epochs per retraining; {cap_words})\n")
    print("| phase | minutes |\n| --- | --- |")
    for name, seconds in projection.items():
        print(f"| {name} | {seconds / 60:.1f} |")
    print(f"| **total** | **{sum(projection.values()) / 60:.1f}** |")
    print("\nRatios\n\n| ratio | value |\n| --- | --- |")
    for name, value in ratios(f).items():
        print(f"| {name} | {value:.2f} |")


def ratios(f: Figures) -> dict[str, float]:
    """The issue's yardsticks: the agent's update against the ceiling, TorchRL's loss and the peer.

    "bare update" is the update the loop runs: the compiled one where the config compiles it.
    """
    bare = f.loop_update
    kind = "compiled " if f.loop_compiled else ""
    found = {
        f"{kind}bare update / ceiling": f.ceiling_ratio if f.ceiling_ratio is not None else bare / (f.matmul / 16),
        f"{kind}bare update / SACLoss update": bare / f.library_sac,
        f"in-loop update / {kind}bare update": f.loop / bare,
    }
    if f.compiled_sac:
        found["compiled / eager bare update"] = f.compiled_sac / f.bare_sac
    if f.peer_sac:
        found["in-loop update / SB3 SAC.train"] = f.loop / f.peer_sac
        found[f"{kind}bare update / SB3 SAC.train"] = bare / f.peer_sac
    return found


def measure(run: Run, args: argparse.Namespace) -> Figures:
    specs, data = run.data.specs, run.data
    data.real_buffer.extend(synthetic_transitions(args.real, specs.observation_dim, specs.action_dim))
    data.resize_model_buffer(args.imagined)
    data.model_buffer.extend(synthetic_transitions(args.imagined, specs.observation_dim, specs.action_dim))
    data.env_steps = args.real
    library = per_second(library_sac_step(run), args.updates)
    loop_compiled = bool(run.agent.hparams.compile)
    # Each agent_sac_step prepares the agent for its own kind of update: time it before the next.
    other, compiled_gradients = None, ""
    if loop_compiled or args.compile:
        other = per_second(agent_sac_step(run, compile=not loop_compiled), args.updates)
        if not loop_compiled:
            compiled_gradients = gradients_path(run.agent)
    matmul, loop_update, ceiling_ratio = paired_rates(matmul_product(), agent_sac_step(run, compile=loop_compiled), args.updates)
    if loop_compiled:
        compiled_gradients = gradients_path(run.agent)
    bare, compiled = (other, loop_update) if loop_compiled else (loop_update, other)
    peer = None if args.skip_peer else peer_sac_rate(run, args.updates)
    per_step = data.updates_per_step
    sampling = per_second(data.sample_step_batches, max(args.updates // per_step, 3)) * per_step
    collect_random, collect_policy = collection_rates(run, args.collect_steps)
    wm_epoch = world_model_epoch_seconds(run, [max(args.real // 4, 1000), args.real], args.wm_epochs)
    longest = max(run.rollouts.schedule[2:])
    rollout = {h: rollout_seconds(run, h) for h in sorted({1, longest if longest > 1 else 2})}
    evaluation = evaluation_seconds(run)
    loop = lightning_loop_rate(run)  # last: fitting tears the data module down
    return Figures(
        matmul, library, bare, compiled, peer, sampling, loop, collect_random, collect_policy, wm_epoch, rollout, evaluation, loop_compiled,
        ceiling_ratio, compiled_gradients,
    )  # fmt: skip


def gradients_path(agent) -> str:
    """How ``agent``'s prepared compiled update gets its gradients (``model.gradients_in_graph``, and where it applies)."""
    return "in-graph gradients" if agent.gradients_in_graph else "autograd's backward"


def main(argv: list[str] | None = None) -> None:
    global clock
    args = parse_args(argv)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    clock = CLOCKS[args.clock]
    with tempfile.TemporaryDirectory() as root:
        # The loop is timed after 4 env steps' updates of warm-up.
        run = build_run(args.config, 2 * args.updates + 100, args.threads, args.cli_args, root)
        if args.retrain_epochs is None and run.wm_epoch_cap is None:
            raise SystemExit(
                f"error: {args.config} sets no world-model epoch cap (early stopping decides), so the projection needs "
                "--retrain-epochs N: the mean `model/epochs` of a run of it, for instance."
            )
        figures = measure(run, args)
        print_report(run, figures, args)
        if args.json is not None:
            write_json(args.json, run, figures, args)


def write_json(path: Path, run: Run, f: Figures, args: argparse.Namespace) -> None:
    """The figures, the projected phases (seconds) and what they were measured on, for ``concurrency_projection.py``."""
    data = run.data
    retrain_epochs = args.retrain_epochs or run.wm_epoch_cap
    record = {
        "config": args.config,
        "cli_args": args.cli_args,
        "threads": args.threads,
        "clock": args.clock,
        "load_average": os.getloadavg()[0],
        "figures": dataclasses.asdict(f),
        "retrain_epochs": retrain_epochs,
        "phases_s": project(run, f, retrain_epochs),
        # Of the SAC loop's time, what collecting the policy's env steps takes (a collector process's share).
        "collection_s": run.max_epochs * data.epoch_length / f.collect_policy,
        "retrainings": len(retraining_points(run)),
        "env_steps": run.random_steps + run.max_epochs * data.epoch_length,
    }
    path.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
