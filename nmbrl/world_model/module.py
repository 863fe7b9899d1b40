"""The ensemble world model as a LightningModule: its loss, holdout validation and elites, and its loading from a checkpoint."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from tensordict import TensorDictBase
from torch import Tensor
from torch.nn import functional as F

from nmbrl.checkpoints import CHECKPOINT_KEY, read_checkpoint
from nmbrl.envs import EnvSpecs, env_specs, make_env
from nmbrl.envs import termination  # its termination_rule would be shadowed by build's argument
from nmbrl.errors import ConfigError, TrainingDiverged, check_at_least_one, check_optimizer
from nmbrl.world_model.ensemble import GaussianEnsemble
from nmbrl.world_model.normalizer import Normalizer

TerminationRule = Callable[[Tensor], Tensor]

VALIDATION_CHUNK = 1024  # holdout rows per forward pass (see EnsembleWorldModel.validation_step)


class EnsembleWorldModel(LightningModule):
    """Probabilistic ensemble of dynamics models predicting a Gaussian over [reward, delta-observation].

    Inputs [observation, action] and targets [reward, delta-observation] are normalised with
    statistics of the real data. Training uses one bootstrap sample per member (drawn once per
    ``fit_transitions`` call), a holdout split and early stopping; the members with the lowest
    holdout error are the elites used for imagined rollouts.

    Args:
        ensemble_size: Number of members trained in parallel.
        num_elites: Members with the lowest holdout error used for rollouts.
        hidden_size: Units in each hidden layer.
        num_hidden_layers: Hidden layers of each member.
        weight_decays: L2 penalty of each layer (hidden layers then output layer).
        logvar_bound_penalty: Weight of the penalty that keeps the learned log-variance bounds tight.
        batch_size: Minibatch size of each member.
        holdout_ratio: Fraction of the real data held out to validate and pick elites.
        max_holdout: Largest holdout set.
        patience: Stop after this many epochs in which no member improved.
        min_improvement: Relative holdout improvement that counts as improving.
        max_epochs: Cap on epochs per retraining (None: train until early stopping).
        learn_termination: Learn a termination head. None: only when no exact rule is known.
        optimizer: Optimizer for the ensemble (default: fused Adam with lr 1e-3).
    """

    def __init__(
        self,
        ensemble_size: int = 7,
        num_elites: int = 5,
        hidden_size: int = 200,
        num_hidden_layers: int = 4,
        weight_decays: list[float] = [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4],
        logvar_bound_penalty: float = 0.01,
        batch_size: int = 256,
        holdout_ratio: float = 0.2,
        max_holdout: int = 5000,
        patience: int = 5,
        min_improvement: float = 0.01,
        max_epochs: int | None = None,
        learn_termination: bool | None = None,
        optimizer: OptimizerCallable | None = None,
    ) -> None:
        super().__init__()
        check_at_least_one(
            ensemble_size=ensemble_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            batch_size=batch_size,
            max_holdout=max_holdout,
            patience=patience,
        )
        if max_epochs is not None and max_epochs < 1:
            raise ConfigError(f"max_epochs={max_epochs} must be at least 1, or null to train until early stopping.")
        for name, value in (("logvar_bound_penalty", logvar_bound_penalty), ("min_improvement", min_improvement)):
            if not value >= 0:
                raise ConfigError(f"{name}={value} must not be negative.")
        if not all(decay >= 0 for decay in weight_decays):
            raise ConfigError(f"weight_decays={list(weight_decays)}: every weight decay must be at least 0.")
        if not 1 <= num_elites <= ensemble_size:
            raise ConfigError(
                f"num_elites={num_elites} with ensemble_size={ensemble_size}: the elites are chosen among "
                f"the members, so num_elites must be between 1 and ensemble_size. Lower num_elites or raise ensemble_size."
            )
        if len(weight_decays) != num_hidden_layers + 1:
            raise ConfigError(
                f"weight_decays has {len(weight_decays)} values, but a member has {num_hidden_layers + 1} layers "
                f"(num_hidden_layers={num_hidden_layers} plus the output layer): give one value per layer."
            )
        if not 0.0 < holdout_ratio < 1.0:
            raise ConfigError(f"holdout_ratio={holdout_ratio} must lie strictly between 0 and 1.")
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        check_optimizer(optimizer)
        self.optimizer_factory = optimizer
        self.automatic_optimization = False
        self.network: GaussianEnsemble | None = None
        self.termination_rule: TerminationRule | None = None

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: str | os.PathLike, map_location: torch.device | str | None = None, **kwargs: Any
    ) -> EnsembleWorldModel:
        """The world model of a training checkpoint (``cli.py fit``), built and loaded, in eval mode.

        Lightning's version would read the checkpoint's ``"state_dict"``, which holds the agent: the
        world model is in the ``WorldModelTraining`` callback's state. ``map_location`` is the device
        (default: CPU); ``kwargs`` override stored hyperparameters. ConfigError if the file is not an
        NMBRL checkpoint or its run had no world model.
        """
        return cls.from_checkpoint(read_checkpoint(checkpoint_path), map_location or "cpu", **kwargs)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: dict[str, Any], device: torch.device | str = "cpu", **overrides: Any
    ) -> EnsembleWorldModel:
        """The trained ensemble of a loaded ``checkpoint``, on ``device`` and in eval mode.

        Weights, normaliser statistics and elites are restored; the optimizer starts afresh.
        ``overrides`` replace stored hyperparameters, as in Lightning's ``load_from_checkpoint``
        (training settings such as ``max_epochs`` or ``optimizer``; the architecture must match the weights).
        ConfigError if the checkpoint is not NMBRL's or its run had no world model.
        """
        record, state = world_model_state(checkpoint)
        env = make_env(record["env"], seed=0)
        try:
            rule = termination.termination_rule(record["env"])
            return cls.from_training_state(state, env_specs(env), rule, device, **overrides)
        finally:
            env.close()

    @classmethod
    def from_training_state(
        cls,
        state: dict[str, Any],
        specs: EnvSpecs,
        termination_rule: TerminationRule | None,
        device: torch.device | str = "cpu",
        **overrides: Any,
    ) -> EnsembleWorldModel:
        """Build the ensemble of a ``WorldModelTraining`` state for an environment and load its weights, in eval mode.

        The architecture comes from the stored hparams, or from the weights' shapes for checkpoints
        written before hparams were stored (see ``inferred_hparams``); ``overrides`` replace them.
        """
        weights = state["world_model"]
        hparams = state["hparams"] if "hparams" in state else inferred_hparams(weights)
        world_model = cls(**{**hparams, **overrides})
        world_model.build(specs, termination_rule)
        world_model.load_state_dict(weights)
        return world_model.move_to(device).eval()

    def build(self, specs: EnvSpecs, termination_rule: TerminationRule | None) -> None:
        """Create the networks for an environment; ``termination_rule=None`` means learn one."""
        hp = self.hparams
        learn = termination_rule is None if hp.learn_termination is None else hp.learn_termination
        if termination_rule is None and not learn:
            raise ConfigError(
                "learn_termination=False but no exact termination rule is known for this environment: "
                "set learn_termination to null or true."
            )
        in_dim, out_dim = specs.observation_dim + specs.action_dim, 1 + specs.observation_dim
        self.network = GaussianEnsemble(hp.ensemble_size, in_dim, out_dim, hp.hidden_size, hp.num_hidden_layers, learn)
        self.input_norm = Normalizer(in_dim)
        self.target_norm = Normalizer(out_dim)
        self.register_buffer("elites", torch.arange(hp.num_elites))
        self.register_buffer("trained", torch.tensor(False))
        self.termination_rule = None if learn else termination_rule
        self.optimizer = self.configure_optimizers()

    def move_to(self, device: torch.device | str) -> EnsembleWorldModel:
        """Move the weights and the optimizer's state, which ``Module.to`` leaves behind, to ``device``."""
        self.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    state[key] = value.to(device)
        return self

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            # Fused: the same Adam update in one kernel, about 7% faster per epoch on CPU.
            return torch.optim.Adam(self.network.parameters(), lr=1e-3, fused=True)
        return self.optimizer_factory(self.network.parameters())

    # --- loss ---------------------------------------------------------------------------------

    def loss(self, inputs: Tensor, targets: Tensor, terminated: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The whole objective, as autograd sees it: Gaussian NLL of each member on its own batch (``E x B x D``),
        the log-variance bound penalty, the termination BCE and the layers' L2 weight decay.

        Training steps take this objective's gradient the cheaper way (``data_loss`` plus
        ``add_weight_decay_gradients``); tests keep this form as the reference.
        """
        loss, metrics = self.data_loss(inputs, targets, terminated)
        return loss + self.weight_decay_penalty(), metrics

    def data_loss(self, inputs: Tensor, targets: Tensor, terminated: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective less the weight decay: NLL, log-variance bound penalty and termination BCE."""
        mean, logvar, logit = self.network(inputs)
        nll = (((mean - targets) ** 2) * torch.exp(-logvar) + logvar).mean(dim=(1, 2))
        bound_penalty = self.network.max_logvar.sum() - self.network.min_logvar.sum()
        loss = nll.sum() + self.hparams.logvar_bound_penalty * bound_penalty
        metrics = {"model/train_nll": nll.mean().detach()}
        if logit is not None:
            bce = F.binary_cross_entropy_with_logits(logit, terminated.float(), reduction="none").mean(dim=(1, 2))
            loss = loss + bce.sum()
            metrics["model/termination_bce"] = bce.mean().detach()
        return loss, metrics

    def weight_decay_penalty(self) -> Tensor:
        """``sum_l wd_l / 2 * ||W_l||^2`` over the layers' weights (biases are not decayed)."""
        return sum(wd * 0.5 * layer.weight.pow(2).sum() for wd, layer in zip(self.hparams.weight_decays, self.network.layers))

    @torch.no_grad()
    def add_weight_decay_gradients(self) -> None:
        """Add the weight-decay penalty's gradient, ``wd_l * W_l``, to each layer's weight gradient.

        The same gradient as backpropagating ``weight_decay_penalty``, in two ``foreach`` kernels
        instead of a squared norm per layer in the graph and its backward: about 9% of a
        training step at the default sizes. Works with any optimizer (unlike Adam's own
        ``weight_decay``, which AdamW would read as decoupled decay).
        """
        weights = [layer.weight for layer in self.network.layers]
        torch._foreach_add_([w.grad for w in weights], torch._foreach_mul(weights, list(self.hparams.weight_decays)))

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int = 0) -> dict[str, Tensor] | None:
        """One optimizer step on ``loss``'s gradient; None, and no step, when the loss is NaN or infinite."""
        loss, metrics = self.data_loss(*batch)
        if not torch.isfinite(loss):
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.add_weight_decay_gradients()
        self.optimizer.step()
        return metrics

    @torch.no_grad()
    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int = 0) -> Tensor:
        """Holdout MSE of each member (``E``) on the same batch (``B x D``), in normalised units.

        Run in chunks of ``VALIDATION_CHUNK`` rows: the activations of thousands of rows times the
        ensemble are tens of megabytes each, and allocating them costs more than the products
        (a 4000-row holdout took 50 ms whole against 36 ms in chunks).
        """
        inputs, targets, _ = batch
        squared_error = inputs.new_zeros(self.hparams.ensemble_size)
        for start in range(0, len(inputs), VALIDATION_CHUNK):
            chunk = slice(start, start + VALIDATION_CHUNK)
            mean, _, _ = self.network(inputs[chunk].expand(self.hparams.ensemble_size, -1, -1))
            squared_error += ((mean - targets[chunk]) ** 2).sum(dim=(1, 2))
        return squared_error / targets.numel()

    # --- training on the real buffer ----------------------------------------------------------

    def fit_transitions(
        self,
        transitions: TensorDictBase,
        should_stop: Callable[[], bool] = lambda: False,
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> dict[str, float]:
        """Retrain on all real ``transitions`` until the holdout error stops improving (or ``should_stop()``).

        ``on_epoch(epochs, holdout_mse)`` is called after each epoch with the members' mean holdout error.

        Weights are kept between calls (warm start); each member ends with its best holdout
        weights. Batches with a NaN or infinite loss are skipped and counted in
        ``model/skipped_batches``; if no batch of a retraining was usable, ``TrainingDiverged``.
        Returns the metrics of the last epoch.
        """
        inputs, targets, terminated = self.training_pairs(transitions)
        self.input_norm.fit(inputs)
        self.target_norm.fit(targets)
        x, y = self.input_norm.normalize(inputs), self.target_norm.normalize(targets)
        train_idx, holdout_idx = self.holdout_split(len(x))
        holdout = (x[holdout_idx], y[holdout_idx], terminated[holdout_idx])
        bootstrap = train_idx[torch.randint(len(train_idx), (self.hparams.ensemble_size, len(train_idx)), device=x.device)]
        best = torch.full((self.hparams.ensemble_size,), 1e10, device=x.device)
        snapshot = self.member_state()
        epochs = since_improvement = skipped = batches = 0
        train_metrics: dict[str, Tensor] = {}  # stays empty if should_stop() before the first epoch
        while since_improvement < self.hparams.patience and epochs != self.hparams.max_epochs and not should_stop():
            train_metrics, epoch_skipped, epoch_batches = self.train_epoch(x, y, terminated, bootstrap)
            skipped, batches = skipped + epoch_skipped, batches + epoch_batches
            holdout_mse = self.validation_step(holdout)
            improved = (best - holdout_mse) / best > self.hparams.min_improvement
            best = torch.where(improved, holdout_mse, best)
            self.update_member_state(snapshot, improved)
            since_improvement = 0 if improved.any() else since_improvement + 1
            epochs += 1
            if on_epoch is not None:
                on_epoch(epochs, float(holdout_mse.mean()))
        self.load_member_state(snapshot)
        if batches and skipped == batches:
            raise TrainingDiverged(
                f"world model: every one of {batches} training batches had a NaN or infinite loss. "
                "Check the environment's observations and rewards for NaN or huge values."
            )
        self.elites.copy_(torch.argsort(best)[: self.hparams.num_elites])
        self.trained.fill_(True)
        return {
            **{k: float(v) for k, v in train_metrics.items()},
            "model/holdout_mse": float(best[self.elites].mean()),
            "model/epochs": float(epochs),
            "model/skipped_batches": float(skipped),
            "model/gradient_steps": float(batches - skipped),
        }

    def train_epoch(self, x: Tensor, y: Tensor, terminated: Tensor, bootstrap: Tensor) -> tuple[dict[str, Tensor], int, int]:
        """One pass over each member's bootstrap sample, shuffled anew (the sample itself is fixed).

        Returns the last good batch's metrics, the number of skipped batches and of all batches.
        """
        order = torch.argsort(torch.rand(bootstrap.shape, device=x.device), dim=1)
        shuffled = torch.gather(bootstrap, 1, order)
        metrics, skipped, batches = {}, 0, 0
        for start in range(0, shuffled.shape[1], self.hparams.batch_size):
            idx = shuffled[:, start : start + self.hparams.batch_size]
            step_metrics = self.training_step((x[idx], y[idx], terminated[idx]))
            batches += 1
            if step_metrics is None:
                skipped += 1
            else:
                metrics = step_metrics
        return metrics, skipped, batches

    def holdout_split(self, n: int) -> tuple[Tensor, Tensor]:
        n_holdout = min(int(n * self.hparams.holdout_ratio), self.hparams.max_holdout)
        perm = torch.randperm(n, device=self.elites.device)
        return perm[n_holdout:], perm[:n_holdout]

    @staticmethod
    def training_pairs(transitions: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """Inputs [observation, action], targets [reward, delta-observation] and termination flags."""
        obs, next_obs = transitions["observation"], transitions["next", "observation"]
        inputs = torch.cat([obs, transitions["action"]], dim=-1)
        targets = torch.cat([transitions["next", "reward"], next_obs - obs], dim=-1)
        return inputs, targets, transitions["next", "terminated"]

    # --- per-member snapshots for early stopping ----------------------------------------------

    def member_state(self) -> dict[str, Tensor]:
        """Copies of the parameters that have one slice per member."""
        return {name: p.detach().clone() for name, p in self.network.named_parameters() if "logvar" not in name}

    def update_member_state(self, state: dict[str, Tensor], members: Tensor) -> None:
        params = dict(self.network.named_parameters())
        for name, saved in state.items():
            saved[members] = params[name].detach()[members]

    @torch.no_grad()
    def load_member_state(self, state: dict[str, Tensor]) -> None:
        params = dict(self.network.named_parameters())
        for name, saved in state.items():
            params[name].copy_(saved)

    # --- imagination --------------------------------------------------------------------------

    @torch.no_grad()
    def imagine_step(self, observation: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Sample one step for each row of ``observation`` (``N x D``) with a random elite each.

        Rows are dealt out to the elites in a random balanced order, so each elite runs only on
        its share of the batch: one batched matmul per layer, no loop over members.
        Returns next observation (``N x D``), reward (``N x 1``), terminated (``N x 1``) and the
        model's uncertainty (``N x 1``): the predicted standard deviation of the sampling elite,
        averaged over the normalised targets. It is high where the model fits the real data
        badly, such as contacts it cannot resolve; it costs nothing extra to compute.
        """
        n, k = observation.shape[0], len(self.elites)
        per_elite = math.ceil(n / k)
        perm = torch.randperm(n, device=observation.device)
        perm = perm[torch.arange(per_elite * k, device=perm.device) % n]  # pad by cycling

        def in_row_order(values: Tensor) -> Tensor:
            """``k x per_elite x F`` outputs of the elites -> ``N x F`` in the rows' original order."""
            flat = values.reshape(k * per_elite, -1)[:n]
            out = torch.empty_like(flat)
            out[perm[:n]] = flat
            return out

        x = self.input_norm.normalize(torch.cat([observation, action], dim=-1))[perm].view(k, per_elite, -1)
        mean, logvar, logit = self.network(x, members=self.elites)
        std = torch.exp(0.5 * logvar)
        sample = self.target_norm.denormalize(in_row_order(mean + torch.randn_like(mean) * std))
        uncertainty = in_row_order(std.mean(dim=-1))
        reward, next_observation = sample[:, :1], observation + sample[:, 1:]
        if self.termination_rule is not None:
            terminated = self.termination_rule(next_observation)
        else:
            terminated = in_row_order(logit) > 0
        return next_observation, reward, terminated, uncertainty


def world_model_state(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``"nmbrl"`` record and the world-model callback's state; ConfigError if either is missing."""
    record = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if record is None:
        raise ConfigError(
            f"this is not an NMBRL checkpoint (it has no {CHECKPOINT_KEY!r} record): "
            "pass a checkpoint written by `cli.py fit`, e.g. runs/<experiment id>/<run id>/checkpoints/last.ckpt."
        )
    # The callback's state_key is its class name: WorldModelTraining, or WorldModelTrainingProcess in concurrent mode.
    states = checkpoint.get("callbacks", {}).values()
    state = next((s for s in states if isinstance(s, dict) and "world_model" in s), None)
    if state is None:
        raise ConfigError(
            f"the checkpoint of run {record.get('run_id')} on {record['env']!r} has no world model: that run was "
            "trained without one (SAC only, no model_training group in its config). Load a checkpoint of an MBPO "
            "run (configs/mbpo.yaml)."
        )
    return record, state


def inferred_hparams(weights: dict[str, Tensor]) -> dict[str, Any]:
    """The architecture of an ensemble read from its weights, for checkpoints that did not store hparams.

    Only the shapes are known: the training settings (batch size, holdout, patience, max_epochs,
    logvar_bound_penalty, weight decays) then take EnsembleWorldModel's defaults, the weight decays
    cut or padded with the last default to one per layer.
    """
    num_hidden_layers = sum(1 for name in weights if name.startswith("network.hidden.") and name.endswith(".weight"))
    ensemble_size, _, hidden_size = weights["network.hidden.0.weight"].shape
    out_dim = weights["network.max_logvar"].shape[-1]
    default_decays = inspect.signature(EnsembleWorldModel).parameters["weight_decays"].default
    decays = (default_decays + [default_decays[-1]] * num_hidden_layers)[: num_hidden_layers + 1]
    return {
        "ensemble_size": ensemble_size,
        "num_elites": len(weights["elites"]),
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "weight_decays": decays,
        "learn_termination": weights["network.head.weight"].shape[-1] == 2 * out_dim + 1,
    }
