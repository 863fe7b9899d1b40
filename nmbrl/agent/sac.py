"""Soft Actor-Critic as a LightningModule, built on TorchRL's SACLoss and SoftUpdate."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from tensordict import TensorDictBase
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchrl.modules import ProbabilisticActor
from torchrl.objectives import SACLoss, SoftUpdate

from nmbrl.agent.divergence import DivergenceGuard
from nmbrl.agent.networks import make_actor, make_critic
from nmbrl.envs import EnvSpecs
from nmbrl.errors import ConfigError, check_at_least_one
from nmbrl.evaluation import run_episode
from nmbrl.tracking import log_now

LOSS_KEYS = ("loss_actor", "loss_qvalue", "loss_alpha")
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
    ) -> None:
        super().__init__()
        if max_loss_ratio <= 1:
            raise ConfigError(f"max_loss_ratio={max_loss_ratio} must be above 1: it is how many times its running average a loss may reach.")
        check_at_least_one(divergence_patience=divergence_patience)
        if averaged_policy_tau is not None and not 0 < averaged_policy_tau <= 1:
            raise ConfigError(f"averaged_policy_tau={averaged_policy_tau} must be in (0, 1], or null to evaluate the actor itself.")
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.optimizer_factory = optimizer
        self.automatic_optimization = False
        self.loss_module: SACLoss | None = None
        self.averaged_actor: AveragedModel | None = None
        self.guard: DivergenceGuard | None = None
        self.test_results: list[tuple[float, int]] = []

    def build(self, specs: EnvSpecs) -> None:
        """Create actor, critics, loss and target updater for an environment."""
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
        self.target_update = SoftUpdate(self.loss_module, tau=hp.tau)
        if hp.averaged_policy_tau is not None:
            self.averaged_actor = AveragedModel(actor, multi_avg_fn=get_ema_multi_avg_fn(1 - hp.averaged_policy_tau))
            self.averaged_actor.requires_grad_(False)  # not trained: DDP must not wait for its gradients

    def configure_model(self) -> None:
        if self.loss_module is None:
            self.build(self.trainer.datamodule.specs)

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
        # After any checkpoint is restored, so the first snapshot holds the resumed weights.
        self.guard = DivergenceGuard(
            self.loss_module,
            self.optimizers().optimizer,
            explosion_keys=("loss_qvalue",),
            max_loss_ratio=self.hparams.max_loss_ratio,
            patience=self.hparams.divergence_patience,
        )

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        losses = self.loss_module(batch)
        checked = self.guard.values({key: losses[key] for key in LOSS_KEYS})
        problem = self.guard.problem(checked)
        if problem is not None:
            self.reject_update(problem)
            return
        loss = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.target_update.step()
        if self.averaged_actor is not None:
            self.averaged_actor.update_parameters(self.policy)
        self.guard.accept(checked)
        if self.global_step % self.trainer.log_every_n_steps == 0:
            # Logged directly: LightningModule.log costs ~1.5 ms a call, as much as a tenth of an update.
            log_now(
                self.trainer,
                {
                    "train/critic_loss": checked["loss_qvalue"],
                    "train/actor_loss": checked["loss_actor"],
                    "train/alpha_loss": checked["loss_alpha"],
                    "train/alpha": losses["alpha"].item(),
                    "train/entropy": losses["entropy"].item(),
                },
            )

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
        """One evaluation episode with the deterministic policy, until the environment ends it."""
        data = self.trainer.datamodule
        episode = run_episode(data.eval_env, self.evaluation_policy, max_steps=TEST_EPISODE_STEP_CAP)
        episode_return = float(episode["next", "reward"].sum())
        self.test_results.append((episode_return, episode.shape[0] * data.action_repeat))  # env steps
        self.log("test/return_mean", episode_return, on_epoch=True, batch_size=1)
