"""Soft Actor-Critic as a LightningModule: TorchRL's SACLoss holds the networks, ``update`` computes its losses fast."""

from __future__ import annotations

import os
import shutil
import sysconfig
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from tensordict import TensorDictBase
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchrl.data import Bounded
from torchrl.modules import ProbabilisticActor
from torchrl.objectives import SACLoss, SoftUpdate

from nmbrl.agent.divergence import DivergenceGuard
from nmbrl.agent.networks import make_actor, make_critic
from nmbrl.agent.update import COMPILABLE, Batch, Losses, Networks, as_batch, sac_gradients, sac_losses
from nmbrl.checkpoints import CHECKPOINT_KEY, take_configured_hyperparameters
from nmbrl.envs import EnvSpecs, env_specs_of
from nmbrl.errors import ConfigError, check_at_least_one, check_optimizer
from nmbrl.evaluation import run_episode
from nmbrl.tracking import log_now, logging_due

# What inductor looks for to build its CPU kernels (torch._inductor.cpp_builder), $CXX first.
CXX_CANDIDATES = ("g++", "clang++", "c++")
# Test episodes end with the environment's own time limit (1000 steps for the supported tasks); this only stops a runaway.
TEST_EPISODE_STEP_CAP = 100_000


class SACAgent(LightningModule):
    """SAC with twin Q networks, target critics and automatic entropy tuning.

    The networks are built in ``configure_model`` from the datamodule's environment specs, so
    constructing the agent is cheap and needs no environment.

    Args:
        hidden_sizes: Hidden layer widths of the actor and of each critic.
        gamma: Discount factor.
        tau: Polyak rate of the target critics.
        target_entropy: Entropy that alpha is tuned towards; "auto" means minus the action size.
        init_alpha: Initial entropy temperature.
        critic_layer_norm: Put a LayerNorm after each hidden layer of the critics.
        optimizer: Optimizer over actor, critics and alpha (default: fused Adam with lr 3e-4).
        max_loss_ratio: A critic loss above this multiple of its running average counts as exploding.
        divergence_patience: Rejected updates in a row (NaN, inf or exploding losses) after which
            training stops with a checkpoint of the last good weights.
        averaged_policy_tau: If set, keep a Polyak average of the actor's weights, moved this far
            towards the actor after each update, and evaluate and test that average instead of the
            actor (data are still collected with the actor). 5e-4 averages over about the last 2000
            updates. None (default): evaluate the actor itself.
        compile: Compile the update with ``torch.compile``. In one CPU process at full precision,
            its losses and their gradients are one graph (``sac_gradients``; see
            ``gradients_in_graph``); with DDP, mixed precision or on a GPU (with CUDA graphs), the
            compiled losses go through autograd's backward. The first update then waits for the
            compilation (5-30 s on 2 CPU cores). Off here, on in ``configs/mbpo.yaml``: 1.66x the
            eager update on a 2-core CPU (``benchmarks/RESULTS.md``). Needs a C++ compiler and
            Python's headers, checked at once.
        gradients_in_graph: Where ``compile`` is on in one CPU process at full precision, take the
            gradients in the compiled graph (``torch.func.grad``): 1.13x the update's rate, but
            Lightning's ``on_before_backward``/``on_after_backward`` hooks do not run. False: the
            compiled losses go through autograd's backward (and those hooks) there too. Both take
            the same steps to float tolerance; over seeds 0-17 of the default job the in-graph
            gradients ended at 762 at 20k against 815 (Welch's p 0.12, a gap that shrank as seeds
            were added, ``benchmarks/RESULTS.md``). No effect without ``compile``.

    Each training batch holds one env step's ``U x B`` transitions (or ``B`` for one update), and
    ``training_step`` makes ``U`` updates of it. The losses are SACLoss's, computed by
    ``nmbrl.agent.update`` on SACLoss's own parameters (tested against SACLoss itself), so
    checkpoints, the policy and the optimizer are TorchRL's.

    An update whose losses are NaN, infinite or exploding is not stepped on: it is skipped, the
    last good weights come back (see ``nmbrl.agent.divergence``), ``train/rejected_updates``
    counts it and a warning says why.
    """

    def __init__(
        self,
        hidden_sizes: list[int] = [256, 256],
        gamma: float = 0.99,
        tau: float = 5e-3,
        target_entropy: float | str = "auto",
        init_alpha: float = 1.0,
        critic_layer_norm: bool = False,
        optimizer: OptimizerCallable | None = None,
        max_loss_ratio: float = 1e4,
        divergence_patience: int = 10,
        averaged_policy_tau: float | None = None,
        compile: bool = False,
        gradients_in_graph: bool = True,
    ) -> None:
        super().__init__()
        check_sac_settings(hidden_sizes, gamma, tau, target_entropy, init_alpha)
        if max_loss_ratio <= 1:
            raise ConfigError(f"max_loss_ratio={max_loss_ratio} must be above 1: it is how many times its running average a loss may reach.")
        check_at_least_one(divergence_patience=divergence_patience)
        if averaged_policy_tau is not None and not 0 < averaged_policy_tau <= 1:
            raise ConfigError(f"averaged_policy_tau={averaged_policy_tau} must be in (0, 1], or null to evaluate the actor itself.")
        if compile:
            check_compiler()
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        check_optimizer(optimizer)
        self.optimizer_factory = optimizer
        self.automatic_optimization = False
        self.loss_module: SACLoss | None = None
        self.averaged_actor: AveragedModel | None = None
        self.guard: DivergenceGuard | None = None
        self.networks: Networks | None = None
        self.detached_networks: Networks | None = None  # what the compiled sac_gradients reads
        self.trainable: list[torch.Tensor] = []  # in the order of sac_gradients' gradients
        self.polyak_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.compiled_losses = None  # sac_losses compiled, for autograd's backward
        self.compiled_gradients = None  # sac_gradients compiled: losses and gradients in one graph
        self.compiled = False  # whether `update` runs the compiled update (prepare_update decides)
        self.gradients_in_graph = False
        self.test_results: list[tuple[float, int, int]] = []  # return, env steps, seed

    def build(self, specs: EnvSpecs) -> None:
        """Create actor, critics and their loss (parameters and target critics included) for an environment."""
        hp = self.hparams
        actor = make_actor(specs.observation_dim, specs.action_spec, hp.hidden_sizes)
        critic = make_critic(specs.observation_dim, specs.action_dim, hp.hidden_sizes, hp.critic_layer_norm)
        self.loss_module = SACLoss(
            actor,
            critic,
            num_qvalue_nets=2,
            loss_function="l2",
            alpha_init=hp.init_alpha,
            action_spec=specs.action_spec,
            target_entropy=hp.target_entropy,
        )
        self.loss_module.make_value_estimator(gamma=hp.gamma)
        # SACLoss registers its target-entropy buffer on first use; do it now so that a fresh
        # agent has the same state_dict keys as a checkpointed one.
        self.loss_module.target_entropy
        # The target critics' rule; `update` takes its step on all their tensors at once.
        self.target_update = SoftUpdate(self.loss_module, tau=hp.tau)
        if hp.averaged_policy_tau is not None:
            self.averaged_actor = AveragedModel(actor, multi_avg_fn=get_ema_multi_avg_fn(1 - hp.averaged_policy_tau))
            self.averaged_actor.requires_grad_(False)  # not trained: DDP must not wait for its gradients

    def configure_model(self) -> None:
        # Outside a Trainer (``SACAgent.load_from_checkpoint``) there is no datamodule to ask:
        # ``on_load_checkpoint`` builds the networks from the checkpoint's own record instead.
        if self.loss_module is None and self._trainer is not None:
            self.build(self.trainer.datamodule.specs)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.loss_module is None:
            self.build(checkpoint_specs(checkpoint))
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING and checkpoint.get("optimizer_states"):
            # Before Lightning loads the optimizer's state: a resumed fit steps with the config's lr.
            changes = take_configured_hyperparameters(checkpoint["optimizer_states"][0], self.configure_optimizers())
            if changes:
                rank_zero_info(f"agent optimizer, from the config: {', '.join(changes)} (its moment estimates are the checkpoint's).")

    @property
    def policy(self) -> ProbabilisticActor:
        """The actor: samples in exploration mode, returns the mean action in deterministic mode."""
        return self.loss_module.actor_network

    @property
    def evaluation_policy(self) -> ProbabilisticActor:
        """The policy that evaluation and ``cli.py test`` run: the averaged actor if there is one."""
        if self.averaged_actor is None:
            return self.policy
        return self.averaged_actor.module

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.loss_module.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            return torch.optim.Adam(params, lr=3e-4, fused=True)
        return self.optimizer_factory(params)

    def on_train_start(self) -> None:
        # After any checkpoint is restored, so the first snapshot holds the resumed weights, and
        # after Lightning has moved the agent to its device.
        self.guard = DivergenceGuard(
            self.loss_module,
            self.optimizers().optimizer,
            explosion_keys=("loss_qvalue",),
            max_loss_ratio=self.hparams.max_loss_ratio,
            patience=self.hparams.divergence_patience,
        )
        self.prepare_update(self.optimizers().optimizer)

    def prepare_update(self, optimizer: torch.optim.Optimizer | None = None, compile: bool | None = None) -> None:
        """Gather the tensors ``update`` reads from SACLoss and, where ``compile`` (default: ``model.compile``), compile the update.

        Compiled on one CPU process, the losses and their gradients are one graph (``sac_gradients``),
        unless ``gradients_in_graph`` is off. Elsewhere the compiled losses go through autograd's
        backward, for what hooks into it: Lightning's backward hooks, DDP's gradient averaging across
        processes, mixed precision's loss scaling; and, on a GPU, CUDA graphs of the losses
        (``compile_losses``). So they do where ``optimizer`` steps other tensors than the ones
        ``sac_gradients`` differentiates (None: ``configure_optimizers``'s).
        """
        self.networks = Networks.of(self.loss_module)
        self.detached_networks = self.networks.detached()
        self.trainable = self.networks.trainable()
        self.polyak_pairs = self.networks.polyak_pairs()
        self.compiled = self.hparams.compile if compile is None else compile
        self.gradients_in_graph = False
        if not self.compiled:
            return  # an update compiled before stays compiled, for a later prepare_update, but unused
        stepped = optimizer if optimizer is not None else self.configure_optimizers()
        self.gradients_in_graph = (
            self.hparams.gradients_in_graph
            and self.device.type == "cpu"
            and self.single_plain_process()
            and steps_exactly(stepped, self.trainable)
        )
        if self.gradients_in_graph and self.compiled_gradients is None:
            self.compiled_gradients = torch.compile(partial(sac_gradients, kernels=COMPILABLE))
        elif not self.gradients_in_graph and self.compiled_losses is None:
            self.compiled_losses = compile_losses(self.device)
        else:
            return  # compiled already
        rank_zero_info("model.compile: the SAC update is compiled at its first call, which takes about 5-30 s on 2 CPU cores.")

    def single_plain_process(self) -> bool:
        """Whether training runs in one process at full precision (or without a Trainer): nothing needs autograd's backward."""
        if self._trainer is None:
            return True
        return self.trainer.world_size == 1 and str(self.trainer.precision) in ("32-true", "32")

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        """``U`` updates on a ``U x B`` batch (one env step's batches), or one on a ``B`` batch."""
        batches = as_batch(batch if batch.ndim == 2 else batch.unsqueeze(0))
        for update in range(batch.shape[0] if batch.ndim == 2 else 1):
            self.update(batches[update])

    def update(self, batch: Batch) -> None:
        """One SAC update: losses, divergence check, optimizer step, target critics, averaged policy."""
        losses, gradients = self.losses_and_gradients(batch)
        checked = self.guard.values({"loss_actor": losses.actor, "loss_qvalue": losses.critic, "loss_alpha": losses.alpha_loss})
        problem = self.guard.problem(checked)
        if problem is not None:
            self.reject_update(problem)
            return
        self.step(losses, self.optimizers(), self.manual_backward, gradients)
        self.guard.accept(checked)
        if logging_due(self.global_step, self.trainer):
            # Logged directly: LightningModule.log costs ~1.5 ms a call, as much as a tenth of an update.
            log_now(
                self.trainer,
                {
                    "train/critic_loss": checked["loss_qvalue"],
                    "train/actor_loss": checked["loss_actor"],
                    "train/alpha_loss": checked["loss_alpha"],
                    "train/alpha": losses.alpha.item(),
                    "train/entropy": losses.entropy.item(),
                },
            )

    def losses_and_gradients(self, batch: Batch) -> tuple[Losses, list[torch.Tensor] | None]:
        """The losses of an update on ``batch``, and their gradients where the compiled graph computes them (else None)."""
        noise = torch.randn((2, *batch.action.shape), device=batch.action.device)
        if self.gradients_in_graph:
            gradients, losses = self.detached_networks.gradients(batch, noise[0], noise[1], self.compiled_gradients)
            return losses, gradients
        return self.networks.losses(batch, noise[0], noise[1], self.compiled_losses if self.compiled else None), None

    def step(
        self,
        losses: Losses,
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None],
        gradients: list[torch.Tensor] | None = None,
    ) -> None:
        """Step on ``losses``: their gradients (``backward``'s, or ``gradients`` if given), optimizer, target critics, averaged policy (no Trainer needed)."""
        if gradients is None:
            optimizer.zero_grad()
            backward(losses.total)
        else:
            for parameter, gradient in zip(self.trainable, gradients, strict=True):
                parameter.grad = in_layout_of(parameter, gradient)
        optimizer.step()
        with torch.no_grad():  # SoftUpdate's step (target.lerp_(source, 1 - eps)), in one call for all tensors
            torch._foreach_lerp_(*self.polyak_pairs, 1 - self.target_update.eps)
        if self.averaged_actor is not None:
            self.averaged_actor.update_parameters(self.policy)

    def reject_update(self, problem: str) -> None:
        """Skip this update and restore the last good weights (or stop, see ``DivergenceGuard``)."""
        rank_zero_warn(
            f"rejected update {self.guard.bad_updates + 1} (after {self.global_step} good ones): {problem}; "
            f"skipped it and restored the weights of good update {self.guard.snapshot['good_updates']}."
        )
        log_now(self.trainer, {"train/rejected_updates": float(self.guard.bad_updates + 1)})
        self.guard.reject(problem)

    # --- cli.py test ----------------------------------------------------------------------------

    def on_test_epoch_start(self) -> None:
        self.test_results = []

    def test_step(self, batch: int, batch_idx: int) -> None:
        """One evaluation episode with the deterministic policy, until the environment ends it.

        Episode ``i`` starts from the env's reset with seed ``data.eval_seed + i``, so that any
        test episode can be replayed outside the CLI (``nmbrl.load_agent``, README).
        """
        data = self.trainer.datamodule
        seed = data.eval_seed + batch_idx
        episode = run_episode(data.eval_env, self.evaluation_policy, max_steps=TEST_EPISODE_STEP_CAP, seed=seed)
        episode_return = float(episode["next", "reward"].sum())
        self.test_results.append((episode_return, episode.shape[0] * data.action_repeat, seed))  # env steps
        self.log("test/return_mean", episode_return, on_epoch=True, batch_size=1)


def check_sac_settings(hidden_sizes: list[int], gamma: float, tau: float, target_entropy: float | str, init_alpha: float) -> None:
    """ConfigError naming the first SAC setting out of its range, before anything is built."""
    if any(width < 1 for width in hidden_sizes):
        raise ConfigError(f"hidden_sizes={list(hidden_sizes)}: every hidden layer needs at least 1 unit.")
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"gamma={gamma} must lie in [0, 1]: it is the discount factor.")
    if not 0.0 < tau <= 1.0:
        raise ConfigError(f"tau={tau} must lie in (0, 1]: the target critics move this far towards the critics after each update (0 would never move them).")
    if isinstance(target_entropy, str) and target_entropy != "auto":
        raise ConfigError(f"target_entropy={target_entropy!r} must be a number or 'auto' (minus the action size).")
    if not init_alpha > 0:
        raise ConfigError(f"init_alpha={init_alpha} must be above 0: alpha is learned as its logarithm.")


def checkpoint_specs(checkpoint: dict) -> EnvSpecs:
    """The environment specs a checkpoint's networks were built for, from its ``"nmbrl"`` record.

    Checkpoints from before the record held the action bounds get them from the environment itself.
    """
    record = checkpoint.get(CHECKPOINT_KEY)
    if record is None:
        raise ConfigError(
            f"this checkpoint is not an NMBRL one (it has no {CHECKPOINT_KEY!r} record): load a checkpoint written by `cli.py fit`."
        )
    if record.get("action_low") is None:
        return env_specs_of(record["env"], action_repeat=record.get("action_repeat", 1))
    low = torch.tensor(record["action_low"], dtype=torch.float32)
    high = torch.tensor(record["action_high"], dtype=torch.float32)
    return EnvSpecs(record["observation_dim"], Bounded(low=low, high=high, shape=low.shape, dtype=torch.float32))


def check_compiler() -> None:
    """ConfigError unless torch.compile can build kernels here: it needs a C++ compiler and Python's C headers."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else CXX_CANDIDATES
    if not any(shutil.which(name) for name in candidates):
        raise ConfigError(
            f"model.compile=true needs a C++ compiler for torch.compile, and none of {', '.join(candidates)} was found. "
            "Install one (Debian/Ubuntu: sudo apt-get install g++) or set --model.compile false."
        )
    headers = Path(sysconfig.get_paths()["include"])
    if not (headers / "Python.h").is_file():
        raise ConfigError(
            f"model.compile=true needs Python's C headers for torch.compile's CPU kernels, and {headers / 'Python.h'} "
            "is missing. Install them (Debian/Ubuntu: sudo apt-get install python3-dev) or set --model.compile false."
        )


def in_layout_of(parameter: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``gradient`` with ``parameter``'s strides, copied where they differ, as autograd's ``AccumulateGrad`` makes it.

    torch's fused CPU Adam (2.13) reads a gradient in memory order whatever its strides: given the
    compiled graph's transposed gradient of the critics' first layer, it stepped each weight on another
    weight's gradient, and the default job ended at 457 and 602 on seeds 0 and 1 (``benchmarks/RESULTS.md``).
    """
    if gradient.stride() == parameter.stride():
        return gradient
    return torch.empty_like(parameter).copy_(gradient)


def steps_exactly(optimizer: torch.optim.Optimizer, tensors: list[torch.Tensor]) -> bool:
    """Whether ``optimizer`` steps ``tensors`` and nothing else."""
    stepped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    return len(stepped) == len(tensors) and set(stepped) == {id(t) for t in tensors}


def compile_losses(device: torch.device):
    """``sac_losses`` under ``torch.compile``: with CUDA graphs on a GPU, plain kernels on CPU.

    The compiled networks use ``COMPILABLE``'s ReLU and linear layers, which keep inductor's CPU
    kernels off bool tensors and spare two copies an update (``nmbrl.agent.update``).
    """
    losses = partial(sac_losses, kernels=COMPILABLE)
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError("model.compile=true on a GPU needs Triton (pip install triton), or set --model.compile false.")
        return torch.compile(losses, mode="reduce-overhead")
    return torch.compile(losses)
