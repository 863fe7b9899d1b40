"""Build TorchRL environments from one name: a gymnasium id or a dm_control ``domain-task``.

Both kinds come out with the same keys: a flat float32 ``"observation"``, ``"action"``,
``"reward"``, ``"done"``, ``"terminated"`` and ``"truncated"``, plus ``"episode_reward"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import torch
from torchrl.data import TensorSpec
from torchrl.envs import (
    CatTensors,
    DMControlEnv,
    DMControlWrapper,
    DoubleToFloat,
    EnvBase,
    FlattenObservation,
    GymEnv,
    RewardSum,
    SerialEnv,
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
    """Raise ConfigError unless ``name`` names an installed gymnasium or dm_control task with continuous actions.

    dm_control's registry is read (all its tasks have continuous actions). A gymnasium env is made,
    neither reset nor stepped, to read its spaces: at most about 0.1 s.
    """
    if is_gym_id(name):
        import gymnasium

        if name not in gymnasium.envs.registry:
            raise ConfigError(f"env={name!r}: no gymnasium environment has this id. {NAMING_HELP}")
        check_gym_spaces(name)
        return
    if name in dm_control_tasks():
        return
    raise ConfigError(f"env={name!r} is not a known environment. {NAMING_HELP}")


def check_gym_spaces(name: str) -> None:
    """ConfigError unless gymnasium env ``name`` can be made and has flat continuous (Box) observations and actions."""
    import gymnasium
    from gymnasium.spaces import Box

    try:
        env = gymnasium.make(name)
    except gymnasium.error.DependencyNotInstalled as error:
        raise ConfigError(f"env={name!r} needs a package that is not installed: {error}") from error
    except ImportError as error:  # such as the mujoco-py tasks (-v2, -v3) gymnasium no longer ships
        newest = gymnasium.envs.registration.find_highest_version(None, name.rsplit("-v", 1)[0])
        hint = f" This machine has {name.rsplit('-v', 1)[0]}-v{newest}." if newest is not None else ""
        raise ConfigError(f"env={name!r} cannot be made here: {str(error).rstrip('.')}.{hint}") from error
    try:
        observation, action = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(action, Box):
        raise ConfigError(
            f"env={name!r} has {type(action).__name__} actions; SAC and MBPO here need continuous (Box) actions, "
            "as in 'Pendulum-v1', 'MountainCarContinuous-v0' or the MuJoCo tasks ('Hopper-v5')."
        )
    if not isinstance(observation, Box) or len(observation.shape) != 1:
        raise ConfigError(
            f"env={name!r} has {observation} observations; the networks here need a flat vector (a 1-d Box)."
        )


def make_env(
    name: str,
    seed: int,
    device: torch.device | str = "cpu",
    render_size: int | None = None,
    action_repeat: int = 1,
    num_envs: int = 1,
) -> EnvBase:
    """Build the TorchRL environment ``name``, seeded with ``seed``.

    With ``action_repeat`` k, one step of the returned environment applies its action for k
    steps of the underlying one and sums their rewards; it stops early when the episode ends.
    With ``render_size``, each step also renders a ``render_size`` square RGB frame under ``"pixels"``
    (headless: ``MUJOCO_GL`` defaults to ``osmesa``, see ``nmbrl.envs``).
    With ``num_envs`` n > 1, the environment is a batch of n copies stepped together (batch size
    ``[n]``, seeded in turn from ``seed``), so that one policy call serves all n; the key
    transforms run once on the whole batch.
    """
    if num_envs < 1:
        raise ConfigError(f"num_envs={num_envs} must be at least 1.")
    if render_size is not None and num_envs > 1:
        raise ConfigError("render_size needs num_envs=1: only a single environment renders frames.")
    # A batch of gymnasium envs casts observations in each member: when some members have ended
    # their episode, TorchRL 0.14's SerialEnv refills their rows from the (float32) input and fails
    # on a float64 output. dm_control tasks all end together, so their batch casts once, outside.
    cast_in_members = num_envs > 1 and is_gym_id(name)
    if num_envs == 1:
        env = base_env(name, device, render_size, action_repeat)
    else:
        member = float32_base_env if cast_in_members else base_env
        env = SideBySideEnv(num_envs, partial(member, name, device, None, action_repeat), device=device)
    if is_gym_id(name):
        env = TransformedEnv(env)
    else:
        obs_keys = [key for key in env.observation_spec.keys() if key != "pixels"]
        env = TransformedEnv(env)
        for key in obs_keys:  # matrices, such as manipulator's arm_pos (8 x 2), become vectors first
            dims = len(env.observation_spec[key].shape) - len(env.batch_size)
            if dims > 1:
                env.append_transform(FlattenObservation(-dims, -1, in_keys=[key]))
        env.append_transform(CatTensors(obs_keys, out_key="observation", del_keys=True))
    if not cast_in_members:
        env.append_transform(DoubleToFloat())
    env.append_transform(RewardSum())
    env.set_seed(seed)
    return env


class SideBySideEnv(SerialEnv):
    """TorchRL's ``SerialEnv``, except that closing it leaves torch's thread count as it was.

    TorchRL 0.14's ``BatchedEnvBase.close`` raises ``torch.get_num_threads()`` by the number of
    members (up to the count at import), to give back the threads a ``ParallelEnv`` takes at
    start; a ``SerialEnv`` takes none. Closing a batch of 5 evaluation envs (``Evaluation.teardown``,
    or the garbage collector) thus moved a ``--torch_threads 1`` process to 2 threads, and on a
    busy machine its SAC updates became 5 to 9 times slower.
    """

    def close(self, *, raise_if_closed: bool = True) -> None:
        threads = torch.get_num_threads()
        try:
            super().close(raise_if_closed=raise_if_closed)
        finally:
            torch.set_num_threads(threads)


def float32_base_env(name: str, device: torch.device | str, render_size: int | None, action_repeat: int) -> EnvBase:
    return TransformedEnv(base_env(name, device, render_size, action_repeat), DoubleToFloat())


def base_env(name: str, device: torch.device | str, render_size: int | None, action_repeat: int) -> EnvBase:
    """The simulator wrapped for TorchRL, before the transforms that give every task the same keys."""
    pixels = {} if render_size is None else {"from_pixels": True, "pixels_only": False}
    if is_gym_id(name):
        size = {} if render_size is None else {"width": render_size, "height": render_size}
        return GymEnv(name, device=device, frame_skip=action_repeat, **pixels, **size)
    domain, task = name.split("-", 1)
    if render_size is None:
        return DMControlEnv(domain, task, device=device, frame_skip=action_repeat)
    # DMControlEnv(domain, task) sends render_kwargs to the task as a task kwarg (TorchRL
    # 0.14); wrapping a loaded suite env passes them to the renderer.
    from dm_control import suite

    size = {"width": render_size, "height": render_size}
    return DMControlWrapper(suite.load(domain, task), device=device, render_kwargs=size, frame_skip=action_repeat, **pixels)


def env_specs_of(name: str, action_repeat: int = 1) -> EnvSpecs:
    """The specs of environment ``name``, from a copy built for the purpose and closed."""
    env = make_env(name, seed=0, action_repeat=action_repeat)
    try:
        return env_specs(env)
    finally:
        env.close()


def env_specs(env: EnvBase) -> EnvSpecs:
    return EnvSpecs(
        observation_dim=env.observation_spec["observation"].shape[-1],
        action_spec=env.action_spec,
    )
