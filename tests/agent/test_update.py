"""The fast SAC update against its oracle, TorchRL's SACLoss and SoftUpdate: same losses, gradients and steps."""

import copy
from functools import partial

import pytest
import torch
from tensordict import TensorDict
from test_sac import OBS_DIM
from test_sac import random_transitions as transitions
from torchrl.data import Bounded

from nmbrl.agent import SACAgent
from nmbrl.agent.sac import check_compiler, compile_losses, steps_exactly
from nmbrl.agent.update import COMPILABLE, LayoutLinear, Losses, Networks, OutputReLU, as_batch, library_linear, sac_gradients
from nmbrl.envs import EnvSpecs
from nmbrl.errors import ConfigError
from tests.weights import distance

BATCH = 128


def perturbed_agent(action_spec: Bounded, critic_layer_norm: bool, seed: int = 0) -> SACAgent:
    """An agent whose LayerNorm weights and target critics differ from their initial values, so each matters."""
    torch.manual_seed(seed)
    agent = SACAgent(hidden_sizes=[32, 32], critic_layer_norm=critic_layer_norm, init_alpha=0.3)
    agent.build(EnvSpecs(observation_dim=OBS_DIM, action_spec=action_spec))
    with torch.no_grad():
        for tensor in [*agent.loss_module.parameters(), *agent.loss_module.target_qvalue_network_params.values(True, True)]:
            tensor.add_(0.05 * torch.randn_like(tensor))
    return agent


def reference_losses(agent: SACAgent, batch: TensorDict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    out = agent.loss_module(batch.clone())
    return {key: out[key] for key in ("loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy")}


def fast_losses(agent: SACAgent, batch: TensorDict, seed: int, compute=None) -> dict[str, torch.Tensor]:
    """The fast losses with SACLoss's noise: it draws the next-state action's noise first, then the actor's."""
    torch.manual_seed(seed)
    shape = batch["action"].shape
    next_noise, noise = torch.empty(shape).normal_(), torch.empty(shape).normal_()
    out = Networks.of(agent.loss_module).losses(as_batch(batch), next_noise, noise, compute)
    return {"loss_actor": out.actor, "loss_qvalue": out.critic, "loss_alpha": out.alpha_loss, "alpha": out.alpha, "entropy": out.entropy}


def gradients(agent: SACAgent, losses: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    total = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
    params = [p for p in agent.loss_module.parameters() if p.requires_grad]
    return list(torch.autograd.grad(total, params))


@pytest.mark.parametrize("critic_layer_norm", [False, True])
@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (-3.0, 0.5)], ids=["unit box", "other box"])
@pytest.mark.parametrize("action_dim", [1, 3])
def test_losses_and_gradients_equal_sacloss(critic_layer_norm, bounds, action_dim):
    agent = perturbed_agent(Bounded(*bounds, shape=(action_dim,)), critic_layer_norm)
    batch = transitions(BATCH, action_dim)

    reference = reference_losses(agent, batch, seed=1)
    fast = fast_losses(agent, batch, seed=1)

    for key in reference:
        torch.testing.assert_close(fast[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    for name, got, want in zip(agent.state_dict(), gradients(agent, fast), gradients(agent, reference)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


def test_a_different_noise_draw_gives_different_losses():
    # The equality above is not vacuous: the losses depend on the sampled actions.
    agent = perturbed_agent(Bounded(-1.0, 1.0, shape=(2,)), critic_layer_norm=True)
    batch = transitions(BATCH, 2)

    assert fast_losses(agent, batch, seed=1)["loss_actor"] != reference_losses(agent, batch, seed=2)["loss_actor"]


def test_terminated_transitions_do_not_bootstrap_in_either():
    agent = perturbed_agent(Bounded(-1.0, 1.0, shape=(1,)), critic_layer_norm=False)
    batch = transitions(BATCH, 1)
    batch["next", "terminated"][:] = True

    fast = fast_losses(agent, batch, seed=3)["loss_qvalue"]
    torch.testing.assert_close(fast, reference_losses(agent, batch, seed=3)["loss_qvalue"])
    # With every transition terminal, the target is the reward alone: the next state does not count.
    batch["next", "observation"] += 10.0
    torch.testing.assert_close(fast_losses(agent, batch, seed=3)["loss_qvalue"], fast)
    batch["next", "terminated"][:] = False
    assert not torch.allclose(fast_losses(agent, batch, seed=3)["loss_qvalue"], fast)


def test_several_full_updates_end_where_sacloss_adam_and_softupdate_end():
    """Losses, fused Adam steps and the Polyak step of the target critics, 5 times, both ways."""
    spec = Bounded(-2.0, 2.0, shape=(2,))
    library, fast = (perturbed_agent(spec, critic_layer_norm=True) for _ in range(2))
    optimizers = [agent.configure_optimizers() for agent in (library, fast)]
    for step in range(5):
        batch = transitions(BATCH, 2, seed=step)
        for agent, optimizer, losses in (
            (library, optimizers[0], reference_losses(library, batch, seed=10 + step)),
            (fast, optimizers[1], fast_losses(fast, batch, seed=10 + step)),
        ):
            if agent is library:
                optimizer.zero_grad()
                (losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]).backward()
                optimizer.step()
                agent.target_update.step()
            else:  # SACAgent.update's own step
                agent.prepare_update()
                names = ("loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy")
                agent.step(Losses(*(losses[name] for name in names)), optimizer, torch.Tensor.backward)

    moved = False
    for (name, got), want in zip(fast.state_dict().items(), library.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
    for name, now in fast.state_dict().items():
        moved |= "target_qvalue" in name and not torch.equal(now, perturbed_agent(spec, True).state_dict()[name])
    assert moved  # the target critics did follow the critics


def test_the_compiled_losses_equal_the_eager_ones():
    agent = perturbed_agent(Bounded(-3.0, 0.5, shape=(2,)), critic_layer_norm=True)
    batch = transitions(BATCH, 2)

    eager = fast_losses(agent, batch, seed=4)
    compiled = fast_losses(agent, batch, seed=4, compute=compile_losses(torch.device("cpu")))

    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-5, atol=1e-6, msg=key)
    for got, want in zip(gradients(agent, compiled), gradients(agent, eager)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def in_graph_gradients(agent: SACAgent, batch: TensorDict, seed: int, compute=None) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """``sac_gradients``'s losses and gradients (in the optimizer's parameter order) with ``fast_losses``' noise."""
    torch.manual_seed(seed)
    shape = batch["action"].shape
    next_noise, noise = torch.empty(shape).normal_(), torch.empty(shape).normal_()
    networks = Networks.of(agent.loss_module)
    grads, out = networks.detached().gradients(as_batch(batch), next_noise, noise, compute)
    by_tensor = dict(zip(map(id, networks.trainable()), grads))
    losses = {"loss_actor": out.actor, "loss_qvalue": out.critic, "loss_alpha": out.alpha_loss, "alpha": out.alpha, "entropy": out.entropy}
    return losses, [by_tensor[id(p)] for p in agent.loss_module.parameters() if p.requires_grad]


@pytest.mark.parametrize("critic_layer_norm", [False, True])
def test_in_graph_gradients_equal_autograds(critic_layer_norm):
    # sac_gradients differentiates with torch.func.grad; autograd's gradients of the same losses
    # (tested against SACLoss above) are its oracle.
    agent = perturbed_agent(Bounded(-3.0, 0.5, shape=(2,)), critic_layer_norm)
    batch = transitions(BATCH, 2)

    eager = fast_losses(agent, batch, seed=5)
    losses, grads = in_graph_gradients(agent, batch, seed=5)

    for key in eager:
        torch.testing.assert_close(losses[key], eager[key], rtol=1e-6, atol=1e-7, msg=key)
    for name, got, want in zip(agent.state_dict(), grads, gradients(agent, eager), strict=False):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=name)
    assert all(not g.requires_grad for g in grads)  # nothing left for a backward pass


def test_the_compiled_in_graph_gradients_equal_autograds():
    # Compiled with the networks' compilable kernels: LayoutLinear once gave wrong weight gradients
    # here (ctx.needs_input_grad under torch.compile of torch.func.grad), which this catches.
    agent = perturbed_agent(Bounded(-3.0, 0.5, shape=(2,)), critic_layer_norm=True)
    batch = transitions(BATCH, 2)

    eager = fast_losses(agent, batch, seed=6)
    losses, grads = in_graph_gradients(agent, batch, seed=6, compute=torch.compile(partial(sac_gradients, kernels=COMPILABLE)))

    for key in eager:
        torch.testing.assert_close(losses[key], eager[key], rtol=1e-5, atol=1e-6, msg=key)
    for got, want in zip(grads, gradients(agent, eager), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_compiled_agent_on_one_cpu_process_steps_on_in_graph_gradients_as_the_eager_agent_does():
    spec = Bounded(-2.0, 2.0, shape=(2,))
    eager, compiled = (perturbed_agent(spec, critic_layer_norm=True) for _ in range(2))
    compiled.hparams.compile = True
    # SGD: Adam's first steps are lr * sign(gradient), and flip where a gradient is float noise
    # around 0, which the two summation orders round differently.
    optimizers = [torch.optim.SGD([p for p in agent.loss_module.parameters() if p.requires_grad], lr=0.05) for agent in (eager, compiled)]
    for agent, optimizer in zip((eager, compiled), optimizers):
        agent.prepare_update(optimizer)
    assert compiled.gradients_in_graph and compiled.compiled_gradients is not None and compiled.compiled_losses is None
    assert not eager.gradients_in_graph

    for step in range(3):
        batch = as_batch(transitions(BATCH, 2, seed=step))
        for agent, optimizer in zip((eager, compiled), optimizers):
            torch.manual_seed(20 + step)  # the same noise for both
            losses, grads = agent.losses_and_gradients(batch)
            assert (grads is None) is (agent is eager)
            agent.step(losses, optimizer, torch.Tensor.backward, grads)

    for (name, got), want in zip(compiled.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(compiled.state_dict()["loss_module.log_alpha"], perturbed_agent(spec, True).state_dict()["loss_module.log_alpha"])
    # Fused Adam reads gradients in memory order: each must come in its parameter's layout, as
    # autograd gives them (the compiled graph's gradient of the critics' first layer comes transposed).
    assert all(p.grad.stride() == p.stride() for p in compiled.trainable)


def test_fused_adam_steps_a_compiled_agent_as_it_steps_on_autograds_gradients():
    # One step, so Adam's lr * sign(gradient) cannot flip on float noise: compare with a tolerance
    # below lr only where the gradient is clearly away from zero.
    spec = Bounded(-2.0, 2.0, shape=(2,))
    eager, compiled = (perturbed_agent(spec, critic_layer_norm=True) for _ in range(2))
    compiled.hparams.compile = True
    optimizers = [agent.configure_optimizers() for agent in (eager, compiled)]  # fused Adam, lr 3e-4
    for agent, optimizer in zip((eager, compiled), optimizers):
        agent.prepare_update(optimizer)
    batch = as_batch(transitions(BATCH, 2, seed=0))
    for agent, optimizer in zip((eager, compiled), optimizers):
        torch.manual_seed(30)
        losses, grads = agent.losses_and_gradients(batch)
        agent.step(losses, optimizer, torch.Tensor.backward, grads)

    for mine, theirs in zip(compiled.trainable, eager.trainable, strict=True):
        clear = theirs.grad.abs() > 1e-4 * theirs.grad.abs().max()
        torch.testing.assert_close(mine[clear], theirs[clear], rtol=0, atol=1e-6)


def test_thirty_fused_adam_updates_on_in_graph_gradients_end_where_the_eager_agents_end():
    # Training as the default config trains: fused Adam, Polyak targets, new batches and noise each
    # update. A bug in the optimizer's state, the gradients' layouts or the target critics would
    # grow over the steps; float noise stays near 1e-7 of the distance the weights moved (an eager
    # agent with one weight moved by 1e-6 ends about 3e-6 away).
    spec = Bounded(-2.0, 2.0, shape=(2,))
    eager, compiled = (perturbed_agent(spec, critic_layer_norm=True) for _ in range(2))
    compiled.hparams.compile = True
    optimizers = [agent.configure_optimizers() for agent in (eager, compiled)]
    for agent, optimizer in zip((eager, compiled), optimizers):
        agent.prepare_update(optimizer)
    assert compiled.gradients_in_graph
    start = [p.detach().clone() for p in eager.parameters()]
    targets_start = [t.clone() for t in eager.polyak_pairs[0]]

    for step in range(30):
        batch = as_batch(transitions(BATCH, 2, seed=step))
        for agent, optimizer in zip((eager, compiled), optimizers):
            torch.manual_seed(40 + step)
            losses, grads = agent.losses_and_gradients(batch)
            agent.step(losses, optimizer, torch.Tensor.backward, grads)

    moved = distance(list(eager.parameters()), start)
    assert moved > 0.1
    assert distance(list(compiled.parameters()), list(eager.parameters())) < 1e-5 * moved
    targets_moved = distance(eager.polyak_pairs[0], targets_start)
    assert targets_moved > 0
    assert distance(compiled.polyak_pairs[0], eager.polyak_pairs[0]) < 1e-5 * targets_moved


def test_gradients_go_through_autograd_where_the_optimizer_steps_other_tensors():
    agent = perturbed_agent(Bounded(-1.0, 1.0, shape=(1,)), critic_layer_norm=False)
    agent.hparams.compile = True
    actor_only = torch.optim.Adam(agent.loss_module.actor_network.parameters())

    agent.prepare_update(actor_only)

    assert not steps_exactly(actor_only, agent.networks.trainable())
    assert not agent.gradients_in_graph and agent.compiled_losses is not None


def test_gradients_go_through_autograd_where_the_setting_says_so():
    agent = perturbed_agent(Bounded(-1.0, 1.0, shape=(1,)), critic_layer_norm=False)
    agent.hparams.compile = True
    agent.hparams.gradients_in_graph = False

    agent.prepare_update()

    assert steps_exactly(agent.configure_optimizers(), agent.networks.trainable())  # the graph could take them
    assert not agent.gradients_in_graph and agent.compiled_losses is not None and agent.compiled_gradients is None


def test_an_eager_prepare_after_a_compiled_one_runs_the_eager_update():
    # benchmarks/throughput.py and update_rates.py time one agent eager and compiled, in either order.
    agent = perturbed_agent(Bounded(-1.0, 1.0, shape=(1,)), critic_layer_norm=False)
    agent.hparams.gradients_in_graph = False
    agent.prepare_update(compile=True)
    calls = []
    compiled = agent.compiled_losses
    agent.compiled_losses = lambda *args: calls.append(1) or compiled(*args)
    batch = as_batch(transitions(BATCH, 1, seed=0))

    agent.losses_and_gradients(batch)
    agent.prepare_update(compile=False)
    losses, gradients = agent.losses_and_gradients(batch)

    assert calls == [1] and not agent.compiled and gradients is None
    assert losses.critic.grad_fn is not None  # eager autograd's graph, to step on


def test_compile_without_a_cpp_compiler_is_a_config_error_naming_the_fix(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")

    with pytest.raises(ConfigError, match="C\\+\\+ compiler.*apt-get install g\\+\\+.*--model.compile false"):
        SACAgent(compile=True)
    with pytest.raises(ConfigError):
        check_compiler()


def test_compile_without_python_headers_is_a_config_error_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "python")  # a compiler is found
    monkeypatch.setattr("nmbrl.agent.sac.sysconfig.get_paths", lambda: {"include": str(tmp_path)})  # no Python.h there

    with pytest.raises(ConfigError, match="Python.h.*apt-get install python3-dev.*--model.compile false"):
        SACAgent(compile=True)


def test_compile_is_accepted_where_a_compiler_is_found(monkeypatch):
    monkeypatch.setenv("CXX", "python")  # any program on PATH stands in for one

    assert SACAgent(compile=True).hparams.compile


def test_output_relu_is_relu_forward_and_backward_zero_included():
    x = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0]).repeat(4, 1) * torch.arange(1.0, 5.0)[:, None]
    upstream = torch.randn_like(x)
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = OutputReLU.apply(ours)
    out.backward(upstream)
    torch.relu(theirs).backward(upstream)

    torch.testing.assert_close(out, torch.relu(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=0)
    assert (ours.grad[:, :4] == 0).all() and (ours.grad[:, 4:] == upstream[:, 4:]).all()


@pytest.mark.parametrize(
    "x_shape, weight_shape",
    [((64, 5), (32, 5)), ((2, 64, 32), (2, 32, 32)), ((64, 6), (2, 32, 6))],
    ids=["actor layer", "stacked critics", "critics' first layer (input shared)"],
)
def test_layout_linear_is_the_library_linear_with_gradients_in_the_weights_layout(x_shape, weight_shape):
    torch.manual_seed(0)
    x = torch.randn(x_shape)
    if len(weight_shape) == 3 and x.ndim == 2:
        x = x.expand(weight_shape[0], *x.shape)  # as critic_forward feeds both critics one input
    weight, bias = torch.randn(weight_shape), torch.randn(*weight_shape[:-2], weight_shape[-2])
    upstream = torch.randn(*x.shape[:-1], weight_shape[-2])
    ours = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    theirs = [t.clone().requires_grad_(True) for t in (x, weight, bias)]

    out = LayoutLinear.apply(*ours)
    out.backward(upstream)
    reference = library_linear(*theirs)
    reference.backward(upstream)

    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)
    # As the graph gives it (before AccumulateGrad, which copies any other layout into the weight's):
    (raw,) = torch.autograd.grad(LayoutLinear.apply(x, ours[1], bias), [ours[1]], upstream)
    assert raw.stride() == weight.stride()


def test_the_compile_message_comes_once_however_often_the_update_is_prepared(caplog):
    agent = perturbed_agent(Bounded(-1.0, 1.0, shape=(1,)), critic_layer_norm=False)
    optimizer = agent.configure_optimizers()

    with caplog.at_level("INFO"):
        for _ in range(3):  # on_train_start prepares it again after every fit and checkpoint restore
            agent.prepare_update(optimizer, compile=True)

    assert sum("compiled at its first call" in record.getMessage() for record in caplog.records) == 1


def test_an_agent_whose_policy_is_untied_from_its_trained_parameters_is_refused():
    # copy.deepcopy of a SACLoss gives its actor module other tensors than the parameters the
    # optimizer steps; updating that copy would train tensors the policy never reads.
    agent = perturbed_agent(Bounded(-1.0, 1.0, shape=(1,)), critic_layer_norm=False)
    agent.prepare_update()  # the agent as built is fine
    copied = copy.deepcopy(agent)

    with pytest.raises(ValueError, match="deepcopy.*state_dict"):
        copied.prepare_update()
