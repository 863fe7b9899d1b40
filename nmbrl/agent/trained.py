"""A trained agent outside the CLI: actions for observations as its environment gives them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import Tensor
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor

from nmbrl.agent.sac import SACAgent
from nmbrl.errors import ConfigError


class TrainedAgent:
    """A trained SAC policy that acts on observations as its environment gives them.

    Made by ``nmbrl.load_agent``. ``act`` takes one observation or a batch (``N x O``): a numpy
    array, a tensor, a list, or a dm_control observation dict (flattened as training flattened
    it: the keys in sorted order, each value flattened). It returns actions within the env's
    action bounds, as numpy arrays (tensors for tensor input), deterministic unless asked.

    Like ``cli.py test``, it acts with the averaged policy where the run kept one
    (``model.averaged_policy_tau``); ``averaged=False`` picks the actor that collected the data.

    Attributes:
        env_name: The environment the agent was trained on (a gymnasium id or ``domain-task``).
        observation_dim, action_dim: Sizes of one flat observation and one action.
        action_low, action_high: The action bounds (numpy arrays).
        policy: The TorchRL actor that acts (``observation`` in, ``action`` out), for TorchRL code.
        agent: The ``SACAgent`` LightningModule itself (critics, optimizer-free).
    """

    def __init__(self, agent: SACAgent, env_name: str, observation_dim: int, averaged: bool | None = None) -> None:
        if averaged and agent.averaged_actor is None:
            raise ConfigError(
                "averaged=True, but this run kept no averaged policy (model.averaged_policy_tau was null): "
                "load it with averaged=None or False."
            )
        self.agent = agent.eval()
        self.env_name = env_name
        self.observation_dim = observation_dim
        self.policy: ProbabilisticActor = agent.policy if averaged is False else agent.evaluation_policy
        bounds = agent.policy.module[1].distribution_kwargs  # the TanhNormal's action box
        self._low, self._high = bounds["low"].to(agent.device), bounds["high"].to(agent.device)
        self.action_low, self.action_high = self._low.cpu().numpy(), self._high.cpu().numpy()
        self.action_dim = len(self.action_low)

    @property
    def device(self) -> torch.device:
        return self.agent.device

    def act(self, observation: Any, deterministic: bool = True) -> np.ndarray | Tensor:
        """The action for one observation (``O``), or actions for a batch (``N x O``)."""
        returns_tensor = isinstance(observation, Tensor)
        x = self.flat_observation(observation)
        exploration = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
        with torch.no_grad(), set_exploration_type(exploration):
            # A single observation goes in unbatched, as the CLI's evaluation env gives it: the
            # same matrix-vector products, so the same actions to the last bit.
            action = self.policy(TensorDict(observation=x, batch_size=x.shape[:-1]))["action"]
        action = torch.maximum(torch.minimum(action, self._high), self._low)
        return action if returns_tensor else action.cpu().numpy()

    def flat_observation(self, observation: Any) -> Tensor:
        """``observation`` as a float32 tensor ``O`` or ``N x O`` on the agent's device; ConfigError if its size is wrong."""
        if isinstance(observation, Mapping):
            observation = self.flatten_dict(observation)
        x = torch.as_tensor(observation if isinstance(observation, Tensor) else np.asarray(observation))
        x = x.to(device=self.device, dtype=torch.float32)
        if x.ndim not in (1, 2) or x.shape[-1] != self.observation_dim:
            raise ConfigError(
                f"observation of shape {tuple(x.shape)}, but this agent was trained on {self.env_name!r}, whose "
                f"observations have size {self.observation_dim}: pass one observation ({self.observation_dim},) or a "
                f"batch (N, {self.observation_dim}) of that env."
            )
        return x

    def flatten_dict(self, observation: Mapping[str, Any]) -> np.ndarray:
        """A dm_control observation dict, flat as training saw it: sorted keys, each value flattened.

        One observation if the values hold ``observation_dim`` numbers in all; otherwise the
        first dimension of every value is the batch.
        """
        values = [np.asarray(observation[key], dtype=np.float64) for key in sorted(observation)]
        if sum(v.size for v in values) == self.observation_dim:
            return np.concatenate([v.reshape(-1) for v in values])
        return np.concatenate([v.reshape(len(v), -1) for v in values], axis=-1)

    def check_env(self, env: Any) -> None:
        """ConfigError unless ``env`` (gymnasium or dm_control) has this agent's observation and action sizes and bounds."""
        if hasattr(env, "observation_space"):  # gymnasium
            obs_dim = int(np.prod(env.observation_space.shape))
            low, high = np.asarray(env.action_space.low), np.asarray(env.action_space.high)
        else:  # dm_control
            obs_dim = sum(int(np.prod(spec.shape)) for spec in env.observation_spec().values())
            spec = env.action_spec()
            low, high = np.asarray(spec.minimum), np.asarray(spec.maximum)
        low, high = np.broadcast_to(low, np.shape(high)).reshape(-1), high.reshape(-1)
        same_box = low.shape == self.action_low.shape and np.allclose(low, self.action_low) and np.allclose(high, self.action_high)
        if obs_dim != self.observation_dim or not same_box:
            raise ConfigError(
                f"this env has observation size {obs_dim} and actions in [{low.tolist()}, {high.tolist()}], but the agent "
                f"was trained on {self.env_name!r}: observation size {self.observation_dim}, actions in "
                f"[{self.action_low.tolist()}, {self.action_high.tolist()}]. Make the env it was trained on."
            )
