"""The collector role: steps the real environment with the latest published policy, into the shared buffer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

import torch
from torch import nn

from nmbrl.concurrent.pacing import POLL_S, Pacing
from nmbrl.concurrent.shared import SharedReplayBuffer, SharedWeights, module_weights
from nmbrl.concurrent.supervisor import StopSignal
from nmbrl.data.collect import make_collector
from nmbrl.envs import make_env
from nmbrl.random_streams import COLLECTOR
from nmbrl.tracking import RoleLogger


@dataclass
class CollectorRole:
    """Everything the collector process needs; pickled into it when it starts.

    Args:
        env_name: The environment to step, as ``RLDataModule.env``.
        action_repeat: Env steps per transition, as ``RLDataModule.action_repeat``.
        seed: Seed of the environment.
        actor: A private copy of the policy network; published weights are copied into it.
        policy: The agent's published policy weights, stamped with ``agent_updates``.
        buffer: The shared real buffer every transition goes into.
        env_steps: The run's env-step count; this role is its only writer.
        agent_updates: The agent's update count, for pacing.
        policy_version: The policy version this role acts with, for the others to see.
        pacing: When to wait for the agent.
        logger: Where the role's metrics go.
        log_every_s: Seconds between metric writes.
        threads: Torch threads of the process.
        nice: Scheduling priority of the process (0 normal, 19 lowest).
    """

    env_name: str
    action_repeat: int
    seed: int
    actor: nn.Module
    policy: SharedWeights
    buffer: SharedReplayBuffer
    env_steps: Synchronized
    agent_updates: Synchronized
    policy_version: Synchronized
    pacing: Pacing
    logger: RoleLogger
    log_every_s: float = 10.0
    threads: int = 1
    nice: int = 0
    name: str = COLLECTOR  # also the name of its random stream (nmbrl.random_streams)

    def run(self, should_stop: StopSignal) -> None:
        env = make_env(self.env_name, seed=self.seed, action_repeat=self.action_repeat)
        random_transitions = max(self.pacing.random_steps - self.env_steps.value, 0) // self.action_repeat
        collector, episodes = make_collector(env, self.actor, self.buffer, random_transitions, torch.device("cpu"))
        steps = iter(collector)
        acting_with = module_weights(self.actor).set("agent_updates", torch.zeros((), dtype=torch.int64))
        report = CollectorReport(self, time.perf_counter())
        try:
            while not should_stop():
                if not self.pacing.collector_may_step(self.env_steps.value, self.agent_updates.value):
                    time.sleep(POLL_S)
                    continue
                self.take_latest_policy(acting_with)
                report.policy_ages.append(self.agent_updates.value - int(acting_with["agent_updates"]))
                next(steps)
                with self.env_steps.get_lock():
                    self.env_steps.value += self.action_repeat
                if time.perf_counter() - report.since >= self.log_every_s:
                    report.log(acting_with, episodes.finished_returns)
                    episodes.finished_returns = []
        finally:
            collector.shutdown()

    def take_latest_policy(self, acting_with) -> None:
        """Copy the newest published policy into the actor, if there is one it has not taken yet."""
        version = self.policy.read_into(acting_with, newer_than=self.policy_version.value)
        if version is not None:
            self.policy_version.value = version


class CollectorReport:
    """The collector's metrics since the last write: throughput, policy in use and its age, pacing."""

    def __init__(self, role: CollectorRole, since: float) -> None:
        self.role = role
        self.since = since
        self.env_steps = role.env_steps.value
        self.policy_ages: list[int] = []  # per step: agent updates made since the policy it acted with

    def log(self, acting_with, finished_returns: list[float]) -> None:
        role, now, env_steps = self.role, time.perf_counter(), self.role.env_steps.value
        updates = role.agent_updates.value
        metrics = {
            "collector/env_steps_per_s": (env_steps - self.env_steps) / (now - self.since),
            "collector/policy_version": role.policy_version.value,
            "collector/policy_versions_behind": role.policy.version.value - role.policy_version.value,
            "collector/policy_age_updates": sum(self.policy_ages) / max(len(self.policy_ages), 1),
            "pacing/update_ratio": role.pacing.update_ratio(env_steps, updates),
        }
        if finished_returns:
            metrics["train/episode_return"] = sum(finished_returns) / len(finished_returns)
        role.logger.log(metrics, env_steps)
        self.since, self.env_steps, self.policy_ages = now, env_steps, []
