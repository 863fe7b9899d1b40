"""Real-environment collection: a TorchRL collector writing straight into the real buffer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import ReplayBuffer
from torchrl.envs import EnvBase

from nmbrl.data.buffers import select_transitions


class KeepTransitions:
    """Collector post-processing: keep the transition keys and remember finished episodes' returns."""

    def __init__(self) -> None:
        self.finished_returns: list[float] = []

    def __call__(self, data: TensorDictBase) -> TensorDictBase:
        done = data["next", "done"].squeeze(-1)
        if done.any():
            self.finished_returns.extend(data["next", "episode_reward"][done].squeeze(-1).tolist())
        return select_transitions(data)


def make_collector(
    env: EnvBase,
    policy: Callable[[TensorDictBase], TensorDictBase],
    buffer: ReplayBuffer,
    random_steps: int,
    policy_device: torch.device,
) -> tuple[Collector, KeepTransitions]:
    """One env step per iteration, written into ``buffer``; the first ``random_steps`` act uniformly."""
    keep = KeepTransitions()
    collector = Collector(
        env,
        policy,
        frames_per_batch=1,
        total_frames=-1,
        init_random_frames=random_steps,
        replay_buffer=buffer,
        postproc=keep,
        policy_device=policy_device,
        env_device=env.device,
        storing_device="cpu",
        # The policies are feed-forward: the env needs no recurrent-state transforms (TorchRL 0.14
        # warns on every run that an InitTracker is missing, and 0.15 would add one).
        auto_register_policy_transforms=False,
    )
    return collector, keep
