"""benchmarks/update_drift.py: training copies of an agent side by side, and their distances."""

import importlib.util
import sys
from pathlib import Path

import torch
from torchrl.data import Bounded

from nmbrl.agent import SACAgent
from nmbrl.agent.update import Batch
from nmbrl.envs import EnvSpecs

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("update_drift", ROOT / "benchmarks" / "update_drift.py")
update_drift = sys.modules["update_drift"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(update_drift)


def small_agent() -> SACAgent:
    torch.manual_seed(0)
    agent = SACAgent(hidden_sizes=[16, 16])
    agent.build(EnvSpecs(observation_dim=3, action_spec=Bounded(-1.0, 1.0, shape=(2,))))
    return agent


def batch(update: int) -> Batch:
    generator = torch.Generator().manual_seed(update)
    return Batch(*(torch.randn(32, n, generator=generator) for n in (3, 2, 1, 3)), torch.ones(32, 1, dtype=torch.bool))


def test_identical_agents_stay_together_and_a_perturbed_one_drifts():
    agents = {"eager": small_agent(), "same": small_agent(), "perturbed": small_agent()}
    with torch.no_grad():
        next(p for p in agents["perturbed"].loss_module.parameters() if p.requires_grad).view(-1)[0] += 1e-3

    rows = update_drift.train_side_by_side(agents, batch, updates=4, every=2)

    assert [row["updates"] for row in rows] == [1, 2, 4]
    assert all(row["moved"] > 0 for row in rows)
    assert all(row["same"] == 0.0 for row in rows)  # same weights, batches and noise: bit for bit
    assert all(row["perturbed"] > 0.0 for row in rows)
