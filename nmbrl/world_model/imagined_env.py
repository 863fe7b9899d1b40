"""The world model wrapped as a TorchRL environment, so imagined data has the keys of real data."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.data import Composite, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.model_based import ModelBasedEnvBase

from nmbrl.world_model.module import EnsembleWorldModel


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

    Start states are given to ``rollout(..., auto_reset=False, tensordict=start)``. Terminated
    rows are not reset: the caller masks out what follows a predicted termination.
    """

    def __init__(self, world_model: EnsembleWorldModel, real_env: EnvBase, batch_size: int) -> None:
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

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        out = tensordict.select("observation").clone()
        out.set("model_uncertainty", torch.zeros(*self.batch_size, 1, device=self.device))
        out.set("done", torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device))
        out.set("terminated", torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device))
        return out

    def maybe_reset(self, tensordict: TensorDictBase) -> TensorDictBase:
        # No partial resets: rows keep stepping after a predicted termination and are masked out.
        return tensordict

    def any_done(self, tensordict: TensorDictBase) -> bool:
        return False
