"""The world model wrapped as a TorchRL environment, so imagined data has the keys of real data."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.model_based import ModelBasedEnvBase

from nmbrl.world_model.module import EnsembleWorldModel

#: Observations to start imagined episodes from: an ``N x observation_dim`` tensor to draw rows from,
#: or a function of ``batch_size`` that returns ``batch_size x observation_dim`` observations.
StartStates = Tensor | Callable[[int], Tensor]


class _ImagineStep(nn.Module):
    """Adapts ``EnsembleWorldModel.imagine_step`` to the module interface TensorDictModule expects."""

    def __init__(self, world_model: EnsembleWorldModel) -> None:
        super().__init__()
        self.world_model = world_model

    def forward(self, observation: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        next_observation, reward, terminated, uncertainty = self.world_model.imagine_step(observation, action)
        # Imagined episodes only end by termination.
        return next_observation, uncertainty, reward, terminated, terminated.clone()


class ImaginedEnv(ModelBasedEnvBase):
    """A batch of ``batch_size`` imagined environments stepped by the ensemble.

    Besides the real environment's keys, each step reports the model's uncertainty about it under
    ``("next", "model_uncertainty")`` (see ``EnsembleWorldModel.imagine_step``).

    Start states come either with the reset, ``reset(TensorDict(observation=obs))`` with ``obs`` of
    shape ``batch_size x observation_dim`` (as ``branched_rollout`` does:
    ``rollout(..., auto_reset=False, tensordict=env.reset(start))``), or from ``start_states``
    given at construction, used by every reset that brings no observation:

    - a tensor ``N x observation_dim``: each reset draws ``batch_size`` rows uniformly with
      replacement (torch's global RNG), e.g. the observations of a replay buffer;
    - a callable ``(batch_size) -> batch_size x observation_dim`` tensor.

    Then ``env.rollout(horizon, policy)`` works as with any TorchRL env. Terminated rows are not
    reset: the caller masks out what follows a predicted termination.

    Args:
        world_model: A built ensemble; the env runs on its device.
        real_env: The environment the model imitates; only its specs are read, in ``__init__``.
        batch_size: Number of imagined environments stepped together.
        start_states: Where resets without an observation start (see above); None: resets need one.
    """

    def __init__(
        self,
        world_model: EnsembleWorldModel,
        real_env: EnvBase,
        batch_size: int,
        *,
        start_states: StartStates | None = None,
    ) -> None:
        module = TensorDictModule(
            _ImagineStep(world_model),
            in_keys=["observation", "action"],
            out_keys=["observation", "model_uncertainty", "reward", "terminated", "done"],
        )
        super().__init__(module, device=world_model.device, batch_size=torch.Size([batch_size]))
        shape = self.batch_size
        obs_spec = real_env.observation_spec["observation"]
        self.observation_spec = Composite(
            observation=obs_spec.expand(*shape, *obs_spec.shape),
            model_uncertainty=Unbounded(shape=(*shape, 1), dtype=obs_spec.dtype),
            shape=shape,
        ).to(self.device)
        self.action_spec = real_env.action_spec.expand(*shape, *real_env.action_spec.shape).clone().to(self.device)
        self.reward_spec = real_env.reward_spec.expand(*shape, *real_env.reward_spec.shape).clone().to(self.device)
        done = real_env.full_done_spec["done"]
        self.done_spec = Composite(
            done=done.expand(*shape, *done.shape), terminated=done.expand(*shape, *done.shape).clone(), shape=shape
        ).to(self.device)
        self.start_states = self._checked_start_states(start_states)

    @property
    def observation_dim(self) -> int:
        return self.observation_spec["observation"].shape[-1]

    def _checked_start_states(self, start_states: StartStates | None) -> StartStates | None:
        """``start_states`` on the env's device; ValueError if it is not ``N x observation_dim``."""
        if start_states is None or callable(start_states):
            return start_states
        if not isinstance(start_states, Tensor):
            raise TypeError(
                f"start_states is a {type(start_states).__name__}: give a tensor N x {self.observation_dim} of "
                "observations or a callable (batch_size) -> batch_size x observation_dim tensor."
            )
        if start_states.ndim != 2 or start_states.shape[-1] != self.observation_dim or len(start_states) == 0:
            raise ValueError(
                f"start_states has shape {tuple(start_states.shape)}, but the observations of this env have size "
                f"{self.observation_dim}: give a tensor N x {self.observation_dim} with N >= 1."
            )
        return start_states.to(self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        if tensordict is not None and "observation" in tensordict.keys():
            out = tensordict.select("observation").clone()
        else:
            out = TensorDict(observation=self.draw_start_states(), batch_size=self.batch_size, device=self.device)
        out.set("model_uncertainty", torch.zeros(*self.batch_size, 1, device=self.device))
        out.set("done", torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device))
        out.set("terminated", torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device))
        return out

    def draw_start_states(self) -> Tensor:
        """``batch_size x observation_dim`` observations from ``start_states``, for a reset that brings none."""
        (n,) = self.batch_size
        if self.start_states is None:
            raise ValueError(
                "ImaginedEnv.reset() got no observation to start from: pass "
                f"reset(TensorDict(observation=obs, batch_size=[{n}])) with obs of shape {n} x {self.observation_dim}, "
                "or give start_states= at construction (a tensor N x observation_dim to draw from, or a callable "
                "(batch_size) -> batch_size x observation_dim)."
            )
        if isinstance(self.start_states, Tensor):
            return self.start_states[torch.randint(len(self.start_states), (n,), device=self.device)]
        observation = self.start_states(n)
        if tuple(observation.shape) != (n, self.observation_dim):
            raise ValueError(
                f"start_states({n}) returned shape {tuple(observation.shape)}, expected ({n}, {self.observation_dim}): "
                "the callable must return batch_size x observation_dim observations."
            )
        return observation.to(self.device)

    def maybe_reset(self, tensordict: TensorDictBase) -> TensorDictBase:
        # No partial resets: rows keep stepping after a predicted termination and are masked out.
        return tensordict

    def any_done(self, tensordict: TensorDictBase) -> bool:
        return False
