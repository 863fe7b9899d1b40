"""DivergenceGuard: bad losses are never stepped on; good weights come back; persistence stops training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nmbrl.agent.divergence import DivergenceGuard
from nmbrl.errors import TrainingDiverged


def make_guard(**kwargs) -> tuple[nn.Linear, torch.optim.Optimizer, DivergenceGuard]:
    net = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    return net, optimizer, DivergenceGuard(net, optimizer, explosion_keys=("critic",), **kwargs)


def test_nan_and_inf_are_problems_from_the_first_update() -> None:
    _, _, guard = make_guard()
    assert guard.problem({"critic": 1.0, "actor": 0.5}) is None
    assert "actor is nan" in guard.problem({"critic": 1.0, "actor": math.nan})
    assert "critic is inf" in guard.problem({"critic": math.inf, "actor": 0.5})


def test_explosion_is_judged_against_the_running_average_after_warmup() -> None:
    _, _, guard = make_guard(max_loss_ratio=100.0, warmup=5)
    for _ in range(4):
        guard.accept({"critic": 2.0, "actor": 0.0})
    assert guard.problem({"critic": 2.6e7, "actor": 0.0}) is None  # still warming up
    guard.accept({"critic": 2.0, "actor": 0.0})
    assert "critic exploded to 2.6e+07" in guard.problem({"critic": 2.6e7, "actor": 0.0})
    assert guard.problem({"critic": 150.0, "actor": 0.0}) is None  # 75x the average: allowed
    # Only watched losses can explode: the actor loss may swing freely.
    assert guard.problem({"critic": 2.0, "actor": -1e9}) is None


def test_reject_restores_the_last_snapshot_of_weights_and_optimizer() -> None:
    net, optimizer, guard = make_guard(snapshot_every=2)
    for _ in range(2):
        net(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        guard.accept({"critic": 1.0})
    good = {k: v.clone() for k, v in net.state_dict().items()}
    good_steps = optimizer.state_dict()["state"][0]["step"].clone()
    with torch.no_grad():
        net.weight.fill_(math.nan)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    guard.reject("critic is nan")
    assert all(torch.equal(good[k], v) for k, v in net.state_dict().items())
    assert torch.equal(optimizer.state_dict()["state"][0]["step"], good_steps)
    assert guard.bad_updates == 1 and guard.snapshot["good_updates"] == 2


def test_patience_bad_updates_in_a_row_stop_training() -> None:
    _, _, guard = make_guard(patience=3)
    guard.reject("x")
    guard.reject("x")
    guard.accept({"critic": 1.0})  # a good update resets the count
    guard.reject("x")
    guard.reject("x")
    with pytest.raises(TrainingDiverged, match="3 updates in a row were rejected"):
        guard.reject("critic is nan")


def test_values_reads_all_losses_as_floats() -> None:
    values = DivergenceGuard.values({"a": torch.tensor(1.5), "b": torch.tensor(math.inf)})
    assert values == {"a": 1.5, "b": math.inf}
