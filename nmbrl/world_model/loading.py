"""The world model of a training checkpoint, rebuilt outside of a run, and its imagined environment.

A checkpoint written by ``cli.py fit`` keeps the SAC agent in ``"state_dict"``; the world model
lives in the state of the ``WorldModelTraining`` callback (``checkpoint["callbacks"]``), beside
the ``"nmbrl"`` record that names the environment it was trained on.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor
from torchrl.envs import EnvBase

from nmbrl.checkpoints import CHECKPOINT_KEY
from nmbrl.envs import env_specs, make_env
from nmbrl.envs.termination import termination_rule
from nmbrl.errors import ConfigError
from nmbrl.world_model.imagined_env import ImaginedEnv, StartStates
from nmbrl.world_model.module import EnsembleWorldModel


def world_model_from_checkpoint(
    checkpoint: dict[str, Any], device: torch.device | str = "cpu", **overrides: Any
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
        return restore_world_model(state, env, record["env"], device, overrides)
    finally:
        env.close()


def imagined_env_from_checkpoint(
    checkpoint: dict[str, Any],
    batch_size: int,
    start_states: StartStates | None = None,
    device: torch.device | str = "cpu",
) -> ImaginedEnv:
    """An ``ImaginedEnv`` of ``batch_size`` environments stepped by the checkpoint's world model.

    ``start_states`` as in ``ImaginedEnv``; without it, each reset needs ``TensorDict(observation=...)``.
    """
    record, state = world_model_state(checkpoint)
    env = make_env(record["env"], seed=0)
    try:
        world_model = restore_world_model(state, env, record["env"], device, {})
        return ImaginedEnv(world_model, env, batch_size, start_states=start_states)
    finally:
        env.close()  # ImaginedEnv copies the real env's specs and keeps nothing else of it


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


def restore_world_model(
    state: dict[str, Any], env: EnvBase, env_name: str, device: torch.device | str, overrides: dict[str, Any]
) -> EnsembleWorldModel:
    """Build the ensemble of a ``WorldModelTraining`` state for ``env`` and load its weights."""
    weights = state["world_model"]
    hparams = state["hparams"] if "hparams" in state else inferred_hparams(weights)
    world_model = EnsembleWorldModel(**{**hparams, **overrides})
    world_model.build(env_specs(env), termination_rule(env_name))
    world_model.load_state_dict(weights)
    return world_model.move_to(device).eval()


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
