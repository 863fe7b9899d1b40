"""The SAC agent: its update lowers the critic loss, the policy modes, the target entropy, the averaged policy."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from nmbrl.agent import SACAgent
from nmbrl.agent.update import as_batch
from nmbrl.envs import EnvSpecs
from nmbrl.errors import ConfigError

OBS_DIM = 5


def built_agent(action_spec: Bounded, **settings) -> SACAgent:
    # Hidden layers of 64 instead of 256: the same code, four times cheaper.
    agent = SACAgent(**{"hidden_sizes": [64, 64], **settings})
    agent.build(EnvSpecs(observation_dim=OBS_DIM, action_spec=action_spec))
    return agent


def random_transitions(n: int, action_dim: int, seed: int = 0) -> TensorDict:
    generator = torch.Generator().manual_seed(seed)
    terminated = torch.rand(n, 1, generator=generator) < 0.1
    return TensorDict(
        {
            "observation": torch.randn(n, OBS_DIM, generator=generator),
            "action": 2 * torch.rand(n, action_dim, generator=generator) - 1,
            "next": {
                "observation": torch.randn(n, OBS_DIM, generator=generator),
                "reward": torch.randn(n, 1, generator=generator),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        batch_size=[n],
    )


def update(agent: SACAgent, optimizer: torch.optim.Optimizer, batch: TensorDict) -> float:
    """One SAC update, as ``SACAgent.update`` makes it, without a Trainer or divergence check; the critic loss."""
    if agent.networks is None:
        agent.prepare_update()
    noise = torch.randn(2, *batch["action"].shape)
    losses = agent.networks.losses(as_batch(batch), noise[0], noise[1])
    agent.step(losses, optimizer, torch.Tensor.backward)
    return losses.critic.item()


@pytest.mark.parametrize("critic_layer_norm", [False, True])
def test_updates_on_a_fixed_batch_lower_the_critic_loss(critic_layer_norm):
    torch.manual_seed(0)
    agent = built_agent(Bounded(-1, 1, shape=(1,)), critic_layer_norm=critic_layer_norm)
    optimizer = agent.configure_optimizers()
    batch = random_transitions(256, action_dim=1)
    alpha_before = agent.loss_module.log_alpha.item()

    critic_losses = [update(agent, optimizer, batch) for _ in range(50)]

    assert sum(critic_losses[-5:]) / 5 < 0.8 * critic_losses[0]
    # The optimizer covers the temperature too: alpha is tuned, not fixed.
    assert agent.loss_module.log_alpha.item() != alpha_before


@pytest.mark.parametrize("critic_layer_norm", [False, True])
def test_critic_layer_norm_normalises_each_hidden_layer_of_the_critics_only(critic_layer_norm):
    agent = built_agent(Bounded(-1, 1, shape=(1,)), critic_layer_norm=critic_layer_norm)
    critic_norms = [m for m in agent.loss_module.qvalue_network.modules() if isinstance(m, torch.nn.LayerNorm)]
    actor_norms = [m for m in agent.loss_module.actor_network.modules() if isinstance(m, torch.nn.LayerNorm)]

    assert [m.normalized_shape for m in critic_norms] == ([(64,), (64,)] if critic_layer_norm else [])
    assert actor_norms == []
    # The critics' parameters (3 linear and 2 norm weights with the option), and their targets' too.
    critic_keys = set(agent.loss_module.qvalue_network_params.keys(True, True))
    assert len([k for k in critic_keys if "weight" in str(k)]) == (5 if critic_layer_norm else 3)
    assert set(agent.loss_module.target_qvalue_network_params.keys(True, True)) == critic_keys


def test_optimizer_leaves_the_target_critics_to_the_soft_update():
    agent = built_agent(Bounded(-1, 1, shape=(1,)))
    optimized = {id(p) for group in agent.configure_optimizers().param_groups for p in group["params"]}

    targets = list(agent.loss_module.target_qvalue_network_params.values(True, True))

    assert targets and not any(id(p) in optimized for p in targets)


def test_default_optimizer_is_fused_adam_taking_the_same_steps_as_plain_adam():
    torch.manual_seed(0)
    fused_agent = built_agent(Bounded(-1, 1, shape=(1,)))
    plain_agent = built_agent(Bounded(-1, 1, shape=(1,)))
    plain_agent.loss_module.load_state_dict(fused_agent.loss_module.state_dict())
    fused = fused_agent.configure_optimizers()
    plain = torch.optim.Adam([p for p in plain_agent.loss_module.parameters() if p.requires_grad], lr=3e-4)
    batch = random_transitions(256, action_dim=1)
    alpha_before = fused_agent.loss_module.log_alpha.item()

    for agent, optimizer in ((fused_agent, fused), (plain_agent, plain)):
        for _ in range(3):
            torch.manual_seed(1)  # the same action samples in both agents
            update(agent, optimizer, batch.clone())

    assert fused.defaults["fused"] and fused.defaults["lr"] == 3e-4
    for (name, a), b in zip(fused_agent.loss_module.named_parameters(), plain_agent.loss_module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert fused_agent.loss_module.log_alpha.item() != alpha_before  # the steps did move the parameters


def test_deterministic_policy_is_repeatable_and_within_bounds():
    torch.manual_seed(0)
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([0.5, 3.0])
    agent = built_agent(Bounded(low, high, shape=(2,)))
    # Large observations push the tanh into saturation, where out-of-bounds actions would show.
    observation = TensorDict({"observation": 100 * torch.randn(64, OBS_DIM)}, batch_size=[64])

    with set_exploration_type(ExplorationType.DETERMINISTIC):
        first = agent.policy(observation.clone())["action"]
        second = agent.policy(observation.clone())["action"]

    assert torch.equal(first, second)
    assert ((first >= low) & (first <= high)).all()


def test_exploration_policy_samples_within_bounds():
    torch.manual_seed(0)
    agent = built_agent(Bounded(-1, 1, shape=(1,)))
    observation = TensorDict({"observation": torch.randn(64, OBS_DIM)}, batch_size=[64])

    with set_exploration_type(ExplorationType.RANDOM):
        first = agent.policy(observation.clone())["action"]
        second = agent.policy(observation.clone())["action"]

    assert not torch.equal(first, second)
    assert (first.abs() <= 1).all() and (second.abs() <= 1).all()


@pytest.mark.parametrize("action_dim", [1, 3])
def test_auto_target_entropy_is_minus_the_action_size(action_dim):
    agent = built_agent(Bounded(-1, 1, shape=(action_dim,)), target_entropy="auto")

    assert agent.loss_module.target_entropy.item() == -action_dim


def test_a_numeric_target_entropy_is_used_as_is():
    agent = built_agent(Bounded(-1, 1, shape=(3,)), target_entropy=-0.05)

    assert agent.loss_module.target_entropy.item() == pytest.approx(-0.05)


def test_without_averaging_evaluation_runs_the_actor_and_the_state_has_no_average():
    agent = built_agent(Bounded(-1, 1, shape=(1,)))

    assert agent.evaluation_policy is agent.policy
    assert not [key for key in agent.state_dict() if "averaged" in key]  # older checkpoints still load


def test_the_averaged_policy_is_a_frozen_copy_outside_the_optimizer_that_evaluation_runs():
    agent = built_agent(Bounded(-1, 1, shape=(1,)), averaged_policy_tau=0.01)
    optimized = {id(p) for group in agent.configure_optimizers().param_groups for p in group["params"]}
    averaged = list(agent.averaged_actor.parameters())

    assert agent.evaluation_policy is agent.averaged_actor.module
    assert agent.evaluation_policy is not agent.policy
    assert averaged and not any(p.requires_grad or id(p) in optimized for p in averaged)
    observation = TensorDict({"observation": torch.randn(8, OBS_DIM)}, batch_size=[8])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert agent.evaluation_policy(observation)["action"].shape == (8, 1)


def test_the_averaged_policy_moves_tau_of_the_way_towards_the_actor_per_update():
    torch.manual_seed(0)
    tau = 0.1
    agent = built_agent(Bounded(-1, 1, shape=(1,)), averaged_policy_tau=tau)
    optimizer = agent.configure_optimizers()
    batch = random_transitions(256, action_dim=1)
    expected = None
    for _ in range(5):
        update(agent, optimizer, batch)  # which moves the average too, as SACAgent.update does
        actor = [p.detach().clone() for p in agent.policy.parameters()]
        expected = actor if expected is None else [(1 - tau) * e + tau * a for e, a in zip(expected, actor)]

    for average, want, actor in zip(agent.averaged_actor.module.parameters(), expected, agent.policy.parameters()):
        torch.testing.assert_close(average, want)
    assert not torch.equal(average, actor)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hidden_sizes": [256, 0]}, r"hidden_sizes=\[256, 0\]"),
        ({"hidden_sizes": [-1]}, r"hidden_sizes=\[-1\]"),
        ({"gamma": 1.5}, "gamma=1.5"),
        ({"gamma": -0.1}, "gamma=-0.1"),
        ({"gamma": float("nan")}, "gamma=nan"),
        ({"tau": 0.0}, "tau=0.0"),
        ({"tau": 1.5}, "tau=1.5"),
        ({"target_entropy": "foo"}, "target_entropy='foo'"),
        ({"init_alpha": 0.0}, "init_alpha=0.0"),
        ({"init_alpha": -1.0}, "init_alpha=-1.0"),
        ({"optimizer": lambda params: torch.optim.Adam(params, lr=-1)}, "optimizer: Invalid learning rate: -1"),
        ({"optimizer": lambda params: torch.optim.Adam(params, betas=(0.9, 1.5))}, "optimizer: Invalid beta parameter"),
    ],
)
def test_sac_settings_out_of_range_are_config_errors(settings, message):
    # Before these checks: tracebacks after the env was built (hidden sizes, init_alpha, the
    # optimizer), or a run that went on with target critics that never move (tau=0).
    with pytest.raises(ConfigError, match=message):
        SACAgent(**settings)


@pytest.mark.parametrize("settings", [{"gamma": 0.0}, {"gamma": 1.0}, {"tau": 1.0}, {"target_entropy": -2.0}, {"hidden_sizes": []}])
def test_sac_settings_at_the_edges_of_their_ranges_are_accepted(settings):
    assert SACAgent(**settings).hparams.items() >= settings.items()


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5])
def test_an_averaged_policy_rate_outside_0_1_is_a_config_error(tau):
    with pytest.raises(ConfigError, match=f"averaged_policy_tau={tau}"):
        SACAgent(averaged_policy_tau=tau)
