"""Sharing the cores: the agent lends its threads while the world model retrains, where the cores are short."""

from __future__ import annotations

import pytest
import torch

from callbacks import CollectorProcess
from nmbrl.concurrent.cores import ThreadLending, threads_beside
from nmbrl.concurrent.shared import CONTEXT
from nmbrl.errors import ConfigError


@pytest.mark.parametrize(
    ("agent", "role", "cores", "beside"),
    [(2, 1, 2, 1), (2, 1, 3, 2), (2, 1, 16, 2), (1, 1, 1, 1), (4, 2, 4, 2), (2, 4, 4, 1)],
)
def test_the_agent_keeps_what_the_cores_leave_beside_the_role_and_at_least_one(agent, role, cores, beside):
    assert threads_beside(agent, role, cores) == beside


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_agent_drops_to_its_lent_threads_while_the_role_retrains_and_takes_them_back(torch_threads):
    retraining = CONTEXT.Value("b", 0, lock=False)
    lending = ThreadLending(retraining, threads=2, while_retraining=1)

    assert lending.apply() == 2 and torch.get_num_threads() == 2
    retraining.value = 1
    assert lending.apply() == 1 and torch.get_num_threads() == 1
    retraining.value = 0
    assert lending.apply() == 2 and torch.get_num_threads() == 2
    retraining.value = 1
    lending.apply()
    lending.restore()
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("nice", [-1, 20])
def test_a_collector_priority_outside_0_to_19_is_refused_before_anything_starts(nice):
    with pytest.raises(ConfigError, match=f"nice={nice} must be from 0"):
        CollectorProcess(nice=nice)
