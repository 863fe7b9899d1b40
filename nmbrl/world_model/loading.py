"""The world model of a training checkpoint, rebuilt outside of a run, and its imagined environment.

A checkpoint written by ``cli.py fit`` keeps the SAC agent in ``"state_dict"``; the world model
lives in the state of the ``WorldModelTraining`` callback (``checkpoint["callbacks"]``), beside
the ``"nmbrl"`` record that names the environment it was trained on. ``EnsembleWorldModel``
reads that state and rebuilds itself (``from_checkpoint``), so that its ``load_from_checkpoint``
needs nothing of this module, which imports it.
"""

from __future__ import annotations

from typing import Any

import torch

from nmbrl.envs import env_specs, make_env
from nmbrl.envs.termination import termination_rule
from nmbrl.world_model.imagined_env import ImaginedEnv, StartStates
from nmbrl.world_model.module import EnsembleWorldModel, world_model_state


def world_model_from_checkpoint(
    checkpoint: dict[str, Any], device: torch.device | str = "cpu", **overrides: Any
) -> EnsembleWorldModel:
    """The trained ensemble of a loaded ``checkpoint``, on ``device`` and in eval mode.

    Weights, normaliser statistics and elites are restored; the optimizer starts afresh.
    ``overrides`` replace stored hyperparameters, as in Lightning's ``load_from_checkpoint``
    (training settings such as ``max_epochs`` or ``optimizer``; the architecture must match the weights).
    ConfigError if the checkpoint is not NMBRL's or its run had no world model.
    """
    return EnsembleWorldModel.from_checkpoint(checkpoint, device, **overrides)


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
        world_model = EnsembleWorldModel.from_training_state(state, env_specs(env), termination_rule(record["env"]), device)
        return ImaginedEnv(world_model, env, batch_size, start_states=start_states)
    finally:
        env.close()  # ImaginedEnv copies the real env's specs and keeps nothing else of it
