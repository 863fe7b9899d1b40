"""Audit the SAC updates of a real ``cli.py fit`` run against float64: the gradients it steps on, and its steps.

The compiled update (``model.compile``) does the eager update's maths in other float orders, and on a
GPU it runs as CUDA graphs. ``tests/agent/test_update.py`` checks it for one to thirty updates from
chosen weights; this checks it in the states a whole training run passes through. At one update in
every ``--every``, from the same weights, batch and noise, it recomputes the update

- in float64: autograd's gradients of ``sac_losses``, then the optimizer's step in its plain
  (for-loop) form from a float64 copy of its state. This is the truth the others are measured from;
- eagerly in float32, the same way: how far float32 rounding alone lands from it (the floor);

and measures what the run's own optimizer stepped on (the ``.grad`` it read) and how far it moved
the weights, as a relative error from float64. A bug (a gradient stepped on another weight, a stale
tensor, a gradient in the wrong memory layout for a fused optimizer) shows as an error far above the
floor; float noise stays near it. The audited update moves through the places of an env step's
batches (the agent makes ``data.updates_per_step`` updates of one stack of batches), so that a bug
at one place, such as a batch read from the wrong slice of the stack, shows too: with ``--every 20``
and 5 updates per env step, the audit takes the 20th update, then the 39th, 58th, 77th and 96th
(places 4, 3, 2, 1, 0), then the 120th, and so on. The audit draws no random numbers and changes no
state, so the run follows the trajectory ``cli.py fit`` gives for the same arguments.

    python benchmarks/gradient_audit.py --every 20 -- fit --config configs/mbpo.yaml --seed_everything 5

It prints a table by epoch and by place (and writes one row per audited update with ``--csv``). One process: the
optimizer is hooked in this one, so not with DDP.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when run from anywhere

from nmbrl.agent import SACAgent  # noqa: E402
from nmbrl.agent.update import Batch, Networks, sac_losses  # noqa: E402


@dataclass
class Audited:
    """One audited update: relative errors from float64 of the run's and of eager float32's gradients and steps."""

    epoch: int
    update: int  # counted from 1 at the start of the fit
    run_gradient: float
    eager_gradient: float
    run_step: float
    eager_step: float
    layouts_match: bool
    place: int = 0  # the update's place among its env step's updates (0 to data.updates_per_step - 1)


@dataclass
class Pending:
    """What the audit keeps between an update's losses and the end of its optimizer step."""

    batch: Batch
    rng_state: torch.Tensor
    place: int
    trainable: list[torch.Tensor] | None = None  # the SACLoss's trained tensors, in ``trainable_tensors``' order
    weights_before: list[torch.Tensor] | None = None
    steps: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # float64's and eager float32's
    gradients: tuple[float, float, bool] | None = None


class GradientAudit(Callback):
    """Recomputes every ``every``-th SAC update of the agent it is attached to (see the module's docstring)."""

    def __init__(self, every: int = 20) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self.per_step = 1  # updates per env step, all on one stack of batches: the data module's updates_per_step
        self.records: list[Audited] = []
        self.agent: SACAgent | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.epoch = 0
        self.updates = 0
        self.pending: Pending | None = None
        self.handles: list = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.attach(pl_module, pl_module.optimizers().optimizer, per_step=getattr(trainer.datamodule, "updates_per_step", 1))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epoch = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.detach()

    def attach(self, agent: SACAgent, optimizer: torch.optim.Optimizer, per_step: int = 1) -> None:
        """Audit ``agent``'s updates, which ``optimizer`` steps, ``per_step`` of them on each stack of batches (works without a Trainer)."""
        self.detach()
        self.agent, self.optimizer, self.per_step, self.updates = agent, optimizer, per_step, 0
        own = agent.losses_and_gradients

        def losses_and_gradients(batch: Batch):
            self.updates += 1
            due = self.due(self.updates)
            # The update's noise is the next draw of the batch's device generator: keep its state to replay it.
            self.pending = Pending(batch, rng_state(batch.action.device), (self.updates - 1) % self.per_step) if due else None
            return own(batch)

        agent.losses_and_gradients = losses_and_gradients
        self.handles = [optimizer.register_step_pre_hook(self.before_step), optimizer.register_step_post_hook(self.after_step)]

    def due(self, update: int) -> bool:
        """Whether to audit update ``update`` (counted from 1): one in each block of ``every``, at a place that moves back by one each block.

        The last of the block, then the one before it, and so on through ``min(every, per_step)``
        places: with ``every`` a multiple of ``per_step``, the last alone would always be the same
        place among an env step's updates.
        """
        block, offset = divmod(update - 1, self.every)
        return offset == self.every - 1 - block % min(self.every, self.per_step)

    def detach(self) -> None:
        if self.agent is not None:
            self.agent.__dict__.pop("losses_and_gradients", None)
        for handle in self.handles:
            handle.remove()
        self.handles, self.pending = [], None

    def before_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        pending = self.pending
        if pending is None:
            return
        agent = self.agent
        next_noise, noise = replayed_noise(pending)
        # Gathered afresh from the SACLoss, so that tensors the agent gathered once and kept cannot hide a stale copy.
        networks = Networks.of(agent.loss_module)
        trainable = pending.trainable = networks.trainable()
        stepped_on = [torch.zeros_like(p) if p.grad is None else p.grad for p in trainable]  # None: stepped on nothing
        truth = float64_gradients(networks, trainable, pending.batch, next_noise, noise)
        eager = float32_gradients(networks, trainable, pending.batch, next_noise, noise)
        layouts = all(p.grad is not None and same_layout(p.grad, p) for p in trainable)
        pending.gradients = (relative_error(stepped_on, truth), relative_error(eager, truth), layouts)
        pending.weights_before = [p.detach().clone() for p in trainable]
        pending.steps = (
            reference_step(optimizer, trainable, truth, torch.float64),
            reference_step(optimizer, trainable, eager, trainable[0].dtype),
        )

    def after_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        pending, self.pending = self.pending, None
        if pending is None or pending.steps is None:
            return
        taken = [p.detach() - before for p, before in zip(pending.trainable, pending.weights_before, strict=True)]
        truth, eager = pending.steps
        run_gradient, eager_gradient, layouts = pending.gradients
        self.records.append(
            Audited(
                self.epoch, self.updates, run_gradient, eager_gradient, relative_error(taken, truth), relative_error(eager, truth), layouts, pending.place
            )
        )


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (of one shape) keep their elements in the same memory order: the strides of dimensions longer than 1 agree."""
    return a.shape == b.shape and all(n == 1 or x == y for n, x, y in zip(a.shape, a.stride(), b.stride()))


def rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def replayed_noise(pending: Pending) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise the audited update drew (``SACAgent.losses_and_gradients``'s draw), leaving the generator as it is."""
    action = pending.batch.action
    cuda = action.device.type == "cuda"
    with torch.random.fork_rng(devices=[action.device] if cuda else []):
        if cuda:
            torch.cuda.set_rng_state(pending.rng_state, action.device)
        else:
            torch.set_rng_state(pending.rng_state)
        noise = torch.randn((2, *action.shape), device=action.device)
    return noise[0], noise[1]


def float64_gradients(networks: Networks, trainable: list[torch.Tensor], batch: Batch, next_noise, noise) -> list[torch.Tensor]:
    """Autograd's gradients of ``sac_losses`` in float64, with respect to float64 copies of ``trainable``."""
    leaves = {id(t): t.detach().double().requires_grad_(True) for t in trainable}

    def cast(t):
        if not isinstance(t, torch.Tensor):
            return t
        return leaves[id(t)] if id(t) in leaves else (t.detach().double() if t.is_floating_point() else t)

    head = dataclasses.replace(networks.head, centre=cast(networks.head.centre), half_width=cast(networks.head.half_width))
    wide = dataclasses.replace(networks.map(cast), head=head, target_entropy=cast(networks.target_entropy), gamma=cast(networks.gamma))
    batch64 = Batch(*(cast(getattr(batch, f.name)) for f in dataclasses.fields(Batch)))
    losses = sac_losses(*wide.arguments(), batch64, next_noise.double(), noise.double())
    return list(torch.autograd.grad(losses.total, [leaves[id(t)] for t in trainable]))


def float32_gradients(networks: Networks, trainable: list[torch.Tensor], batch: Batch, next_noise, noise) -> list[torch.Tensor]:
    """Autograd's gradients of the eager ``sac_losses`` at the networks' own precision (``.grad`` left alone)."""
    losses = networks.losses(batch, next_noise, noise)
    return list(torch.autograd.grad(losses.total, trainable))


def reference_step(optimizer: torch.optim.Optimizer, trainable: list[torch.Tensor], gradients: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """How far ``optimizer``'s plain (for-loop) form, from a copy of its state in ``dtype``, moves ``trainable`` on ``gradients``."""
    given = {id(p): g for p, g in zip(trainable, gradients, strict=True)}
    copies = {id(p): p.detach().to(dtype).clone() for group in optimizer.param_groups for p in group["params"]}
    for group in optimizer.param_groups:
        for p in group["params"]:
            gradient = given.get(id(p), p.grad)
            copies[id(p)].grad = None if gradient is None else gradient.detach().to(dtype).clone()
    plain = {key: False for key in ("fused", "foreach", "capturable", "differentiable") if key in optimizer.defaults}
    groups = [{**{k: v for k, v in group.items() if k != "params"}, **plain, "params": [copies[id(p)] for p in group["params"]]} for group in optimizer.param_groups]
    state = copy.deepcopy(optimizer.state_dict())
    for group in state["param_groups"]:
        group.update(plain)
    reference = type(optimizer)(groups)
    reference.load_state_dict(state)  # casts the moments to ``dtype``
    with torch.no_grad():
        reference.step()
    return [copies[id(p)] - p.detach().to(dtype) for p in trainable]


def relative_error(got: list[torch.Tensor], truth: list[torch.Tensor]) -> float:
    """``|got - truth| / |truth|`` over all tensors together (L2, in float64)."""
    difference = sum(float(torch.linalg.vector_norm(g.double() - t.double())) ** 2 for g, t in zip(got, truth, strict=True))
    size = sum(float(torch.linalg.vector_norm(t.double())) ** 2 for t in truth)
    return (difference / size) ** 0.5 if size > 0 else float("inf")


def table(records: list[Audited]) -> str:
    """One row per epoch and one for the run, then one per place among an env step's updates (where there are several): median and max of each relative error, and the layouts."""
    def row(label: str, rows: list[Audited]) -> str:
        cells = [label, str(len(rows))]
        for key in ("run_gradient", "eager_gradient", "run_step", "eager_step"):
            values = [getattr(r, key) for r in rows]
            cells.append(f"{statistics.median(values):.1e} / {max(values):.1e}")
        cells.append("yes" if all(r.layouts_match for r in rows) else f"no ({sum(not r.layouts_match for r in rows)})")
        return "| " + " | ".join(cells) + " |"

    header = [
        "| epoch | audited updates | run's gradients | eager float32's gradients | run's steps | eager float32's steps | gradients in their parameters' layouts |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    epochs = sorted({r.epoch for r in records})
    lines = [row(str(e), [r for r in records if r.epoch == e]) for e in epochs]
    places = sorted({r.place for r in records})
    by_place = [row(f"place {p}", [r for r in records if r.place == p]) for p in places] if len(places) > 1 else []
    return "\n".join([*header, *lines, row("all", records), *by_place])


def verdict(records: list[Audited]) -> str:
    """How often the run's error is over 10x eager float32's on the same update, and the reverse.

    A branch that float rounding decides (which critic is the smaller, a ReLU input at 0) moves one
    computation's error far from the other's on a few updates, either way: a bug tips the count one way.
    """
    def over(a: str, b: str) -> int:
        return sum(getattr(r, a) > 10 * getattr(r, b) for r in records)

    return (
        "Relative errors from float64, median / max. Updates where the run's error is over 10x eager float32's: "
        f"gradients {over('run_gradient', 'eager_gradient')}, steps {over('run_step', 'eager_step')} of {len(records)}; "
        f"the reverse: {over('eager_gradient', 'run_gradient')} and {over('eager_step', 'run_step')}."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=20, help="audit one SAC update in every N (default 20), moving through the places of an env step's updates")
    parser.add_argument("--csv", type=Path, help="write one row per audited update here")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the arguments of cli.py, fit and its options")
    args = parser.parse_args(argv)
    args.cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    if args.every < 1:
        parser.error(f"--every must be at least 1, got {args.every}")
    if args.cli[:1] != ["fit"]:
        parser.error("give the run after --, starting with fit: -- fit --config configs/mbpo.yaml")
    return args


def main(argv: list[str] | None = None) -> list[Audited]:
    args = parse_args(argv)
    from nmbrl.cli import run

    audit = GradientAudit(args.every)
    sys.argv[1:] = []  # the run's arguments go to the CLI as args, not twice
    stopped = None
    try:
        run(args.cli, trainer_defaults={"callbacks": [audit]})  # the config's callbacks, and the audit
    except SystemExit as stop:
        if stop.code not in (0, None):
            if not audit.records:
                raise  # the CLI has said why on stderr
            stopped = stop.code  # Ctrl+C or a later error: report the updates audited before it
    if not audit.records:
        raise SystemExit(f"error: no update was audited: the run made fewer SAC updates than --every ({args.every})")
    if args.csv:
        args.csv.write_text(
            ",".join(f.name for f in dataclasses.fields(Audited)) + "\n"
            + "".join(",".join(str(v) for v in dataclasses.astuple(r)) + "\n" for r in audit.records)
        )  # fmt: skip
    print(table(audit.records))
    print(verdict(audit.records))
    if stopped is not None:
        print(f"the run stopped with status {stopped}: the table covers its updates until then", file=sys.stderr)
        raise SystemExit(stopped)
    return audit.records


if __name__ == "__main__":
    main()
