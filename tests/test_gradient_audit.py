"""benchmarks/gradient_audit.py: an exact update audits at the float32 floor, a wrong one far above it, and the run is left as it was."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torchrl.data import Bounded

from nmbrl.agent import SACAgent
from nmbrl.agent.update import Batch, Networks
from nmbrl.envs import EnvSpecs

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gradient_audit", ROOT / "benchmarks" / "gradient_audit.py")
gradient_audit = sys.modules["gradient_audit"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(gradient_audit)

OBS, ACT = 3, 2


def small_agent() -> tuple[SACAgent, torch.optim.Optimizer]:
    """LayerNorm critics, a non-unit action box and the default fused Adam, prepared as ``on_train_start`` prepares it."""
    torch.manual_seed(0)
    agent = SACAgent(hidden_sizes=[16, 16], critic_layer_norm=True, init_alpha=0.3)
    agent.build(EnvSpecs(observation_dim=OBS, action_spec=Bounded(-2.0, 0.5, shape=(ACT,))))
    optimizer = agent.configure_optimizers()
    agent.prepare_update(optimizer)
    return agent, optimizer


def batch(update: int) -> Batch:
    generator = torch.Generator().manual_seed(update)
    sizes = (OBS, ACT, 1, OBS)
    return Batch(*(torch.randn(64, n, generator=generator) for n in sizes), torch.rand(64, 1, generator=generator) > 0.1)


def train(agent: SACAgent, optimizer: torch.optim.Optimizer, updates: int, corrupt=None) -> None:
    """``updates`` updates as ``SACAgent.update`` makes them (without a Trainer), on gradients ``corrupt`` may change."""
    torch.manual_seed(7)  # the noise stream
    for step in range(updates):
        losses, gradients = agent.losses_and_gradients(batch(step))
        if corrupt is not None:
            gradients = corrupt(list(torch.autograd.grad(losses.total, agent.trainable)))
        agent.step(losses, optimizer, torch.Tensor.backward, gradients)


def test_an_exact_update_is_audited_at_the_float32_floor_and_trains_as_without_the_audit():
    audited, optimizer = small_agent()
    audit = gradient_audit.GradientAudit(every=2)
    audit.attach(audited, optimizer)
    train(audited, optimizer, updates=6)
    plain, plain_optimizer = small_agent()
    train(plain, plain_optimizer, updates=6)

    assert [r.update for r in audit.records] == [2, 4, 6]
    for record in audit.records:
        assert 0 < record.eager_gradient < 1e-4 and record.run_gradient < 1e-4
        assert 0 < record.eager_step < 1e-3 and record.run_step < 1e-3
        assert record.layouts_match
    # No random draw and no state changed: the audited agent's weights are the plain one's, bit for bit.
    for got, want in zip(audited.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(got, want)


def test_a_gradient_on_the_wrong_weights_is_far_above_the_floor():
    agent, optimizer = small_agent()
    audit = gradient_audit.GradientAudit(every=1)
    audit.attach(agent, optimizer)
    first_critic_weight = next(i for i, p in enumerate(agent.trainable) if p.dim() == 3)  # stacked critics: Q x out x in

    def rows_swapped(gradients: list[torch.Tensor]) -> list[torch.Tensor]:
        gradients[first_critic_weight] = gradients[first_critic_weight].roll(1, dims=-2)
        return gradients

    train(agent, optimizer, updates=3, corrupt=rows_swapped)

    assert len(audit.records) == 3
    for record in audit.records:
        assert record.run_gradient > 1e3 * record.eager_gradient
        assert record.run_step > 1e2 * record.eager_step


def test_gradients_taken_at_a_stale_copy_of_the_weights_are_far_above_the_floor():
    # The bug class of a compiled update that reads copies of the weights gathered once: its
    # gradients go to the live parameters, but are taken where the weights were.
    agent, optimizer = small_agent()
    audit = gradient_audit.GradientAudit(every=1)
    audit.attach(agent, optimizer)
    frozen = frozen_copy(agent.networks)
    torch.manual_seed(7)
    for step in range(4):
        losses = losses_on(frozen, agent, batch(step))
        gradients = list(torch.autograd.grad(losses.total, frozen.trainable()))
        agent.step(losses, optimizer, torch.Tensor.backward, gradients)

    first, *later = audit.records
    assert first.run_gradient < 1e-4  # the copy is still the weights at the first update
    assert all(r.run_gradient > 1e2 * r.eager_gradient and r.run_step > 1e2 * r.eager_step for r in later)


def frozen_copy(networks: Networks) -> Networks:
    return networks.map(lambda t: t.detach().clone().requires_grad_(t.requires_grad))


def losses_on(networks: Networks, agent: SACAgent, batch: Batch, read: Batch | None = None):
    """The losses of ``networks`` on ``read`` (default ``batch``) with the noise of the agent's audited update on ``batch`` (whose own losses go unused)."""
    generator_state = torch.get_rng_state()
    agent.losses_and_gradients(batch)  # the audit sees an update and keeps its noise's generator state
    torch.set_rng_state(generator_state)
    noise = torch.randn((2, *batch.action.shape))  # the same draw
    return networks.losses(batch if read is None else read, noise[0], noise[1])


def test_the_audited_update_moves_through_the_places_of_an_env_step_s_updates():
    audit = gradient_audit.GradientAudit(every=20)
    audit.per_step = 5
    audited = [u for u in range(1, 201) if audit.due(u)]
    assert audited == [20, 39, 58, 77, 96, 120, 139, 158, 177, 196]  # one in each block of 20
    assert sorted((u - 1) % 5 for u in audited) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    audit.per_step = 1
    assert [u for u in range(1, 61) if audit.due(u)] == [20, 40, 60]
    audit.every = 1
    assert all(audit.due(u) for u in range(1, 11))


def test_a_batch_read_from_the_wrong_place_of_an_env_step_s_stack_is_found():
    # With every 5th update audited and 5 updates an env step, the last update alone was always the
    # same place among them: a bug at another place of the stack went unseen.
    agent, optimizer = small_agent()
    audit = gradient_audit.GradientAudit(every=5)
    audit.attach(agent, optimizer, per_step=5)
    torch.manual_seed(7)
    for step in range(25):
        read = batch(step - 1) if step % 5 == 3 else None  # the fourth update reads the third's batch
        losses = losses_on(agent.networks, agent, batch(step), read)
        agent.step(losses, optimizer, torch.Tensor.backward, list(torch.autograd.grad(losses.total, agent.trainable)))

    assert [r.place for r in audit.records] == [4, 3, 2, 1, 0]
    for record in audit.records:
        wrong = record.place == 3
        assert (record.run_gradient > 1e2 * record.eager_gradient) is wrong
        assert (record.run_gradient < 1e-4) is not wrong


def test_detach_gives_the_agent_its_own_update_back():
    agent, optimizer = small_agent()
    audit = gradient_audit.GradientAudit(every=1)
    audit.attach(agent, optimizer)
    audit.detach()
    train(agent, optimizer, updates=2)
    assert audit.records == [] and "losses_and_gradients" not in agent.__dict__


def test_the_table_has_a_row_per_epoch_and_one_for_the_run():
    records = [gradient_audit.Audited(e, u, 1e-7 * u, 1e-7, 1e-5, 1e-5, e == 0) for e, u in ((0, 1), (0, 2), (1, 30))]
    lines = gradient_audit.table(records).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 0", "| 1", "| all"]
    assert lines[-1].split(" | ")[1:3] == ["3", "2.0e-07 / 3.0e-06"]
    assert lines[-1].endswith("no (1) |")
    assert "gradients 1, steps 0 of 3; the reverse: 0 and 0." in gradient_audit.verdict(records)


def test_the_table_has_a_row_per_place_where_an_env_step_has_several_updates():
    records = [gradient_audit.Audited(0, u, 1e-7 * u, 1e-7, 1e-5, 1e-5, True, place=(u - 1) % 2) for u in (2, 3, 6)]
    lines = gradient_audit.table(records).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 0", "| all", "| place 0", "| place 1"]
    assert lines[-2].split(" | ")[1:3] == ["1", "3.0e-07 / 3.0e-07"]  # update 3
    assert lines[-1].split(" | ")[1:3] == ["2", "4.0e-07 / 6.0e-07"]  # updates 2 and 6


@pytest.mark.parametrize("argv, message", [(["--every", "0", "--", "fit"], "--every must be at least 1"), (["--", "--config", "c.yaml"], "starting with fit")])
def test_bad_arguments_stop_before_the_run(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        gradient_audit.parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_same_layout_ignores_the_strides_of_length_one_dimensions_only():
    weight = torch.zeros(2, 4, 3)
    assert gradient_audit.same_layout(torch.zeros(2, 4, 3), weight)
    assert not gradient_audit.same_layout(torch.zeros(2, 3, 4).mT, weight)  # transposed, as 3eec406's graph gave it
    assert gradient_audit.same_layout(torch.zeros(2, 1, 3), torch.zeros(2, 3).unsqueeze(1).expand(2, 1, 3))
