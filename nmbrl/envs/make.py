"""Build TorchRL environments from one name: a gymnasium id or a dm_control ``domain-task``.

Both kinds come out with the same keys: a flat float32 ``"observation"``, ``"action"``,
``"reward"``, ``"done"``, ``"terminated"`` and ``"truncated"``, plus ``"episode_reward"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torchrl.data import TensorSpec
from torchrl.envs import (
    CatTensors,
    DMControlEnv,
    DMControlWrapper,
    DoubleToFloat,
    EnvBase,
    GymEnv,
    RewardSum,
    TransformedEnv,
)

from nmbrl.errors import ConfigError

GYM_ID = re.compile(r"^[A-Za-z0-9_]+-v\d+$")

NAMING_HELP = (
    "Name a gymnasium environment by its id, e.g. 'Hopper-v5' or 'InvertedPendulum-v5', "
    "and a dm_control task as 'domain-task', e.g. 'cartpole-swingup', 'walker-walk' or 'cheetah-run'."
)


@dataclass(frozen=True)
class EnvSpecs:
    """What the learners need to know about an environment to build their networks."""

    observation_dim: int
    action_spec: TensorSpec

    @property
    def action_dim(self) -> int:
        return self.action_spec.shape[-1]


def is_gym_id(name: str) -> bool:
    return bool(GYM_ID.match(name))


def dm_control_tasks() -> list[str]:
    from dm_control import suite

    return [f"{domain}-{task}" for domain, task in suite.ALL_TASKS]


def check_env_name(name: str) -> None:
    """Raise ConfigError unless ``name`` names an installed gymnasium or dm_control task.

    Only registries are read: no environment is built.
    """
    if is_gym_id(name):
        import gymnasium

        if name in gymnasium.envs.registry:
            return
        raise ConfigError(f"env={name!r}: no gymnasium environment has this id. {NAMING_HELP}")
    if name in dm_control_tasks():
        return
    raise ConfigError(f"env={name!r} is not a known environment. {NAMING_HELP}")


def make_env(
    name: str, seed: int, device: torch.device | str = "cpu", render_size: int | None = None, action_repeat: int = 1
) -> EnvBase:
    """Build the TorchRL environment ``name``, seeded with ``seed``.

    With ``action_repeat`` k, one step of the returned environment applies its action for k
    steps of the underlying one and sums their rewards; it stops early when the episode ends.
    With ``render_size``, each step also renders a ``render_size`` square RGB frame under ``"pixels"``
    (headless: ``MUJOCO_GL`` defaults to ``osmesa``, see ``nmbrl.envs``).
    """
    pixels = {} if render_size is None else {"from_pixels": True, "pixels_only": False}
    if is_gym_id(name):
        size = {} if render_size is None else {"width": render_size, "height": render_size}
        env = TransformedEnv(GymEnv(name, device=device, frame_skip=action_repeat, **pixels, **size))
    else:
        domain, task = name.split("-", 1)
        if render_size is None:
            env = DMControlEnv(domain, task, device=device, frame_skip=action_repeat)
        else:
            # DMControlEnv(domain, task) sends render_kwargs to the task as a task kwarg (TorchRL
            # 0.14); wrapping a loaded suite env passes them to the renderer.
            from dm_control import suite

            size = {"width": render_size, "height": render_size}
            env = DMControlWrapper(
                suite.load(domain, task), device=device, render_kwargs=size, frame_skip=action_repeat, **pixels
            )
        obs_keys = [key for key in env.observation_spec.keys() if key != "pixels"]
        env = TransformedEnv(env, CatTensors(obs_keys, out_key="observation", del_keys=True))
    env.append_transform(DoubleToFloat())
    env.append_transform(RewardSum())
    env.set_seed(seed)
    return env


def env_specs(env: EnvBase) -> EnvSpecs:
    return EnvSpecs(
        observation_dim=env.observation_spec["observation"].shape[-1],
        action_spec=env.action_spec,
    )
