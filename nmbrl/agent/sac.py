"""Soft Actor-Critic as a LightningModule, built on TorchRL's SACLoss and SoftUpdate."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from tensordict import TensorDictBase
from torchrl.modules import ProbabilisticActor
from torchrl.objectives import SACLoss, SoftUpdate

from nmbrl.agent.networks import make_actor, make_critic
from nmbrl.envs import EnvSpecs
from nmbrl.tracking import log_now


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
        optimizer: Optimizer over actor, critics and alpha (default: fused Adam with lr 3e-4).
    """

    def __init__(
        self,
        hidden_sizes: list[int] = [256, 256],
        gamma: float = 0.99,
        tau: float = 5e-3,
        target_entropy: float | str = "auto",
        init_alpha: float = 1.0,
        optimizer: OptimizerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.optimizer_factory = optimizer
        self.automatic_optimization = False
        self.loss_module: SACLoss | None = None

    def build(self, specs: EnvSpecs) -> None:
        """Create actor, critics, loss and target updater for an environment."""
        hp = self.hparams
        actor = make_actor(specs.observation_dim, specs.action_spec, hp.hidden_sizes)
        critic = make_critic(specs.observation_dim, specs.action_dim, hp.hidden_sizes)
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
        self.target_update = SoftUpdate(self.loss_module, tau=hp.tau)

    def configure_model(self) -> None:
        if self.loss_module is None:
            self.build(self.trainer.datamodule.specs)

    @property
    def policy(self) -> ProbabilisticActor:
        """The actor: samples in exploration mode, returns the mean action in deterministic mode."""
        return self.loss_module.actor_network

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.loss_module.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            return torch.optim.Adam(params, lr=3e-4, fused=True)
        return self.optimizer_factory(params)

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> None:
        losses = self.loss_module(batch)
        loss = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.target_update.step()
        if self.global_step % self.trainer.log_every_n_steps == 0:
            # Logged directly: LightningModule.log costs ~1.5 ms a call, as much as a tenth of an update.
            log_now(
                self.trainer,
                {
                    "train/critic_loss": losses["loss_qvalue"].item(),
                    "train/actor_loss": losses["loss_actor"].item(),
                    "train/alpha_loss": losses["loss_alpha"].item(),
                    "train/alpha": losses["alpha"].item(),
                    "train/entropy": losses["entropy"].item(),
                },
            )
