"""The SAC update as plain tensor maths: TorchRL's ``SACLoss``, computed faster.

``SACLoss`` keeps the parameters (so checkpoints and the policy are TorchRL's), but one of its
updates costs about four times the matrix products it needs: it runs the critics through ``vmap``
over TensorDicts, builds distributions and TensorDicts on every call and scores actions through
generic transforms. Here the same numbers come from one batched matrix product per critic layer
for both critics (their parameters are already stacked, ``2 x out x in``), the actor's layers
called directly, and the tanh-Gaussian log-density written out. ``tests/agent/test_update.py``
holds ``SACLoss`` as the oracle: same parameters, batch and noise give the same losses and
gradients.

Shapes: ``B`` batch, ``O`` observation, ``A`` action, ``Q`` critics (2), ``H`` hidden width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor
from tensordict.nn.utils import biased_softplus
from torch import Tensor, nn
from torchrl.objectives import SACLoss

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
LOG_2 = math.log(2.0)


@dataclass
class Layer:
    """One layer of a network: ``kind`` is ``linear``, ``norm`` or ``relu``; weights as the module holds them."""

    kind: str
    weight: Tensor | None = None
    bias: Tensor | None = None
    eps: float = 0.0

    def mapped(self, fn: Callable[[Tensor], Tensor]) -> Layer:
        """This layer with ``fn`` applied to its weight and bias (those it has)."""
        return Layer(self.kind, *(None if t is None else fn(t) for t in (self.weight, self.bias)), self.eps)


@dataclass
class ActorHead:
    """How the actor's output becomes a tanh-Gaussian: ``NormalParamExtractor``'s mapping and the action bounds."""

    softplus_bias: float
    min_scale: float  # biased_softplus's ``min_val``
    scale_lb: float  # NormalParamExtractor's ``scale_lb``
    centre: Tensor | None  # (A,) middle of the action box; None for [-1, 1]
    half_width: Tensor | None  # (A,)


@dataclass
class Batch:
    """One SAC batch as plain tensors: observation ``B x O``, action ``B x A``, reward and not-terminated ``B x 1``."""

    observation: Tensor
    action: Tensor
    reward: Tensor
    next_observation: Tensor
    not_terminated: Tensor

    def __getitem__(self, index: int) -> Batch:
        """Batch ``index`` of a stack of batches (``U x B x ...``)."""
        return Batch(*(getattr(self, f)[index] for f in ("observation", "action", "reward", "next_observation", "not_terminated")))


def as_batch(data: TensorDictBase) -> Batch:
    """The tensors of a transition TensorDict (any leading batch shape)."""
    return Batch(
        observation=data["observation"],
        action=data["action"],
        reward=data["next", "reward"],
        next_observation=data["next", "observation"],
        not_terminated=~data["next", "terminated"],
    )


def network_layers(network: nn.Module, params: TensorDictBase | None = None) -> list[Layer]:
    """The layers of an MLP of ``Linear``, ``LayerNorm`` and ``ReLU``, with weights from ``params`` if given.

    ``params`` is a TensorDict keyed like ``network``'s children (``"0", "weight"``); SACLoss keeps
    the critics' stacked parameters that way.
    """
    layers = []
    for name, module in network.named_children():
        def get(attribute: str) -> Tensor:
            return getattr(module, attribute) if params is None else params[name, attribute]

        if isinstance(module, nn.Linear):
            layers.append(Layer("linear", get("weight"), get("bias")))
        elif isinstance(module, nn.LayerNorm):
            layers.append(Layer("norm", get("weight"), get("bias"), module.eps))
        elif isinstance(module, nn.ReLU):
            layers.append(Layer("relu"))
        else:
            raise TypeError(f"the fast SAC update supports Linear, LayerNorm and ReLU layers, not {type(module).__name__}")
    return layers


def actor_parts(loss: SACLoss) -> tuple[list[Layer], ActorHead]:
    """The actor's layers and its tanh-Gaussian head, as ``nmbrl.agent.networks.make_actor`` builds them."""
    sequential = loss.actor_network.module[0].module  # TensorDictModule(Sequential(MLP, NormalParamExtractor))
    mlp, extractor = sequential
    mapping = extractor.scale_mapping
    if not isinstance(extractor, NormalParamExtractor) or not isinstance(mapping, biased_softplus):
        raise TypeError("the fast SAC update needs the actor of make_actor: an MLP and a biased-softplus NormalParamExtractor")
    bounds = loss.actor_network.module[1].distribution_kwargs
    low, high = bounds["low"], bounds["high"]
    trivial = bool((low == -1).all() and (high == 1).all())  # TanhNormal then skips its affine transform
    head = ActorHead(
        softplus_bias=float(mapping.bias),
        min_scale=float(mapping.min_val),
        scale_lb=float(extractor.scale_lb),
        centre=None if trivial else (high + low) / 2,
        half_width=None if trivial else (high - low) / 2,
    )
    return network_layers(mlp), head


def critic_layers(loss: SACLoss, target: bool = False) -> list[Layer]:
    """The twin critics' layers, each weight stacked ``Q x ...`` as SACLoss holds them."""
    params = loss.target_qvalue_network_params if target else loss.qvalue_network_params
    return network_layers(loss.qvalue_network.module, params["module"])


Activation = Callable[[Tensor], Tensor]
Affine = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, weight, bias) -> x @ weight^T + bias


def library_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight^T + bias`` with torch's own ops: ``F.linear`` for a weight ``out x in``, ``baddbmm`` for stacked ``Q x out x in``."""
    if weight.ndim == 2:
        return F.linear(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(-2), x, weight.mT)


class OutputReLU(torch.autograd.Function):
    """ReLU whose backward reads its float output, ``grad * sign(y)``: ReLU's gradient exactly, 0 at 0 included.

    For compiled code. Where nothing else keeps a ReLU's output for the backward pass (the critics
    with frozen weights in the actor loss), torch.compile's partitioner saves ReLU's mask as a bool
    tensor instead, and inductor's CPU kernels write and read bool tensors element by element
    (torch 2.13, AVX-512): the forward kernel holding one took 940 us against 19 us without it,
    and made the compiled update slower than eager. Saving the float output costs 4 bytes where
    the mask took 1, and keeps every kernel vectorised (``benchmarks/RESULTS.md``).
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (output,) = ctx.saved_tensors
        return grad * torch.sign(output)  # output >= 0: sign is 1 where ReLU passes its input, else 0


class LayoutLinear(torch.autograd.Function):
    """``x @ weight^T + bias`` for a weight ``out x in`` or stacked ``Q x out x in``, whose gradients keep the weight's layout.

    For compiled code, where it saves two copies an update that ``addmm``/``baddbmm`` cost
    (torch 2.13, CPU): the product is written bias-free and the bias added in the next fused
    kernel (LayerNorm or ReLU), where ``baddbmm`` first copies the broadcast bias into its
    ``2 x B x H`` output; and the weight's gradient is computed as ``grad^T @ x``, in the
    weight's own ``out x in`` layout, where autograd's ``bmm`` gives its transpose and
    ``AccumulateGrad`` then copies it into the parameter's layout.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return torch.matmul(x, weight.mT) + bias.unsqueeze(-2)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Every gradient, whether asked for or not: the compiler drops those nothing uses. Under
        # torch.compile of torch.func.grad, ctx.needs_input_grad said False for weights that were
        # differentiated (torch 2.13), and their gradients came out wrong.
        x, weight = ctx.saved_tensors
        return torch.matmul(grad, weight), torch.matmul(grad.mT, x), grad.sum(-2)


@dataclass(frozen=True)
class Kernels:
    """The operations the networks are made of: torch's own for eager code, or those made for ``torch.compile``."""

    linear: Affine
    relu: Activation


# In place: the layer before a ReLU does not keep its output for the backward pass.
EAGER = Kernels(library_linear, torch.relu_)
COMPILABLE = Kernels(LayoutLinear.apply, OutputReLU.apply)


def actor_forward(layers: list[Layer], observation: Tensor, kernels: Kernels = EAGER) -> Tensor:
    """``B x O -> B x 2A``: the actor network's raw output."""
    x = observation
    for layer in layers:
        if layer.kind == "linear":
            x = kernels.linear(x, layer.weight, layer.bias)
        elif layer.kind == "relu":
            x = kernels.relu(x)
        else:
            x = F.layer_norm(x, x.shape[-1:], layer.weight, layer.bias, layer.eps)
    return x


def critic_forward(layers: list[Layer], observation: Tensor, action: Tensor, kernels: Kernels = EAGER) -> Tensor:
    """``(B x O, B x A) -> Q x B``: every critic's value, all critics in each batched matrix product."""
    x = torch.cat([observation, action], dim=-1)
    x = x.expand(layers[0].weight.shape[0], *x.shape)  # Q x B x (O + A)
    for layer in layers:
        if layer.kind == "linear":
            x = kernels.linear(x, layer.weight, layer.bias)
        elif layer.kind == "relu":
            x = kernels.relu(x)
        else:
            x = F.layer_norm(x, x.shape[-1:], eps=layer.eps)
            x = torch.addcmul(layer.bias.unsqueeze(-2), x, layer.weight.unsqueeze(-2))
    return x.squeeze(-1)


def sample_action(
    actor: list[Layer], head: ActorHead, observation: Tensor, noise: Tensor, kernels: Kernels = EAGER
) -> tuple[Tensor, Tensor]:
    """A reparameterised tanh-Gaussian action ``B x A`` and its log-density ``B``, for standard-normal ``noise``.

    TorchRL's ``TanhNormal.rsample_and_log_prob`` with the ``NormalParamExtractor`` of the actor.
    """
    loc, raw_scale = actor_forward(actor, observation, kernels).chunk(2, dim=-1)
    scale = (F.softplus(raw_scale + head.softplus_bias) + head.min_scale).clamp_min(head.scale_lb)
    preimage = loc + noise * scale
    squashed = tanh_clamped(preimage)
    # Normal log-density of the preimage, less log|d tanh/du| = 2 (log 2 - u - softplus(-2u)).
    log_prob = (
        -0.5 * noise.square() - scale.log() - LOG_SQRT_2PI - 2 * (LOG_2 - preimage - F.softplus(-2 * preimage))
    ).sum(-1)
    if head.centre is None:
        return squashed, log_prob
    return squashed * head.half_width + head.centre, log_prob - head.half_width.log().sum()


def tanh_clamped(x: Tensor) -> Tensor:
    """``tanh`` kept 1 float resolution inside (-1, 1), as TorchRL's ``SafeTanhTransform``; gradient ``1 - tanh^2``."""
    limit = 1.0 - torch.finfo(x.dtype).resolution
    y = torch.tanh(x)
    return y + (y.clamp(-limit, limit) - y).detach()


@dataclass
class Losses:
    """SACLoss's outputs: the three losses (scalars, with gradients), alpha and the policy's entropy."""

    actor: Tensor
    critic: Tensor
    alpha_loss: Tensor
    alpha: Tensor
    entropy: Tensor

    @property
    def total(self) -> Tensor:
        return self.actor + self.critic + self.alpha_loss


def sac_losses(
    actor: list[Layer],
    head: ActorHead,
    critics: list[Layer],
    target_critics: list[Layer],
    log_alpha: Tensor,
    target_entropy: Tensor,
    gamma: Tensor | float,
    batch: Batch,
    next_noise: Tensor,
    noise: Tensor,
    kernels: Kernels = EAGER,
) -> Losses:
    """SACLoss's losses (v2: twin critics, no value network, l2 critic loss) for one batch.

    ``next_noise`` and ``noise`` (``B x A``, standard normal) draw the next-state action of the
    target and the current-state action of the actor loss, in the order SACLoss draws them.
    ``kernels`` are the networks' operations: ``EAGER``, or ``COMPILABLE`` for compiled code.
    """
    alpha = log_alpha.detach().exp()
    with torch.no_grad():
        next_action, next_log_prob = sample_action(actor, head, batch.next_observation, next_noise, kernels)
        next_q = critic_forward(target_critics, batch.next_observation, next_action, kernels)  # Q x B
        next_value = (next_q - alpha * next_log_prob).min(dim=0).values.unsqueeze(-1)
        target_q = (batch.reward + gamma * batch.not_terminated * next_value).squeeze(-1)
    q = critic_forward(critics, batch.observation, batch.action, kernels)
    critic_loss = (q - target_q).square().sum(0).mean()

    action, log_prob = sample_action(actor, head, batch.observation, noise, kernels)
    frozen = [critic.mapped(Tensor.detach) for critic in critics]
    q_policy = critic_forward(frozen, batch.observation, action, kernels).min(dim=0).values
    actor_loss = (alpha * log_prob - q_policy).mean()
    alpha_loss = (-log_alpha * (log_prob.detach() + target_entropy)).mean()
    return Losses(actor_loss, critic_loss, alpha_loss, alpha, -log_prob.detach().mean())


def sac_gradients(
    actor: list[Layer],
    head: ActorHead,
    critics: list[Layer],
    target_critics: list[Layer],
    log_alpha: Tensor,
    target_entropy: Tensor,
    gamma: Tensor | float,
    batch: Batch,
    next_noise: Tensor,
    noise: Tensor,
    kernels: Kernels = EAGER,
) -> tuple[list[Tensor], Losses]:
    """``sac_losses``, and the gradients of their sum with respect to ``trainable_tensors(actor, critics, log_alpha)``.

    The gradients come from ``torch.func.grad``, not from autograd's engine: compiled, the losses
    and their gradients are then one graph, which runs without the engine's nodes, gradient
    accumulation or ``zero_grad`` (1.13x the update's rate on a 2-core CPU, ``benchmarks/RESULTS.md``).
    Pass tensors that do not require grad (``Networks.detached``), or the compiled graph also
    prepares a backward pass that nothing calls.
    """

    def total(tensors: list[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        given = iter(tensors)
        losses = sac_losses(
            with_tensors(actor, given), head, with_tensors(critics, given), target_critics, next(given),
            target_entropy, gamma, batch, next_noise, noise, kernels,
        )  # fmt: skip
        return losses.total, (losses.actor, losses.critic, losses.alpha_loss, losses.alpha, losses.entropy)

    gradients, losses = torch.func.grad(total, has_aux=True)(trainable_tensors(actor, critics, log_alpha))
    return gradients, Losses(*losses)


def trainable_tensors(actor: list[Layer], critics: list[Layer], log_alpha: Tensor) -> list[Tensor]:
    """The tensors SAC trains, in a fixed order: each actor layer's, each critic layer's (weight, bias), then ``log_alpha``."""
    return [t for layer in [*actor, *critics] for t in (layer.weight, layer.bias) if t is not None] + [log_alpha]


def with_tensors(layers: list[Layer], tensors: Iterator[Tensor]) -> list[Layer]:
    """``layers`` with their weights and biases taken in turn from ``tensors`` (the order of ``trainable_tensors``)."""
    return [layer.mapped(lambda _: next(tensors)) for layer in layers]


@dataclass
class Networks:
    """Everything ``sac_losses`` reads from a SACLoss, gathered once: the tensors are SACLoss's own.

    The parameters stay where SACLoss keeps them (loading a checkpoint or moving to a device keeps
    the same Parameter objects), so the optimizer, the policy and checkpoints see every update.
    """

    actor: list[Layer]
    head: ActorHead
    critics: list[Layer]
    target_critics: list[Layer]
    log_alpha: Tensor
    target_entropy: Tensor
    gamma: Tensor

    @classmethod
    def of(cls, loss: SACLoss) -> Networks:
        actor, head = actor_parts(loss)
        owned = {id(p) for p in loss.parameters()}
        if any(id(t) not in owned for layer in actor for t in (layer.weight, layer.bias) if t is not None):
            # SACLoss's actor module and its trained parameters are the same tensors only as SACLoss
            # builds them; copy.deepcopy of the loss (or of a module holding it) makes them two copies.
            raise ValueError(
                "the SACLoss's actor module no longer holds the parameters it trains (a copy.deepcopy of the agent "
                "or its loss does that, pytorch/rl#1769): its policy would never learn. Build a new agent and load "
                "the state_dict into it instead."
            )
        device = loss.log_alpha.device
        if head.centre is not None:  # the actor's action bounds do not follow it to its device
            head.centre, head.half_width = head.centre.to(device), head.half_width.to(device)
        return cls(
            actor, head, critic_layers(loss), critic_layers(loss, target=True),
            loss.log_alpha, loss.target_entropy, loss.value_estimator.gamma,
        )  # fmt: skip

    def losses(self, batch: Batch, next_noise: Tensor, noise: Tensor, compute=None) -> Losses:
        """``sac_losses`` on these networks (through ``compute``, a compiled ``sac_losses``, if given)."""
        return (compute or sac_losses)(*self.arguments(), batch, next_noise, noise)

    def gradients(self, batch: Batch, next_noise: Tensor, noise: Tensor, compute) -> tuple[list[Tensor], Losses]:
        """``sac_gradients`` on these networks (through ``compute``, a compiled ``sac_gradients``, if given): call it on ``detached()``."""
        return (compute or sac_gradients)(*self.arguments(), batch, next_noise, noise)

    def arguments(self) -> tuple:
        """The networks' part of the arguments of ``sac_losses`` and ``sac_gradients``."""
        return self.actor, self.head, self.critics, self.target_critics, self.log_alpha, self.target_entropy, self.gamma

    def map(self, fn: Callable[[Tensor], Tensor]) -> Networks:
        """These networks with ``fn`` applied to every layer's weight and bias and to ``log_alpha`` (the head and constants kept)."""
        def layers(given: list[Layer]) -> list[Layer]:
            return [layer.mapped(fn) for layer in given]

        return replace(
            self, actor=layers(self.actor), critics=layers(self.critics), target_critics=layers(self.target_critics), log_alpha=fn(self.log_alpha)
        )

    def detached(self) -> Networks:
        """These networks with their tensors detached: the same storage, so every optimizer step shows in them."""
        return self.map(Tensor.detach)

    def trainable(self) -> list[Tensor]:
        """The parameters ``gradients`` differentiates, in the order of its gradients."""
        return trainable_tensors(self.actor, self.critics, self.log_alpha)

    def polyak_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        """The target critics' tensors and the critics' tensors they follow, in the same order."""
        targets = [t for layer in self.target_critics for t in (layer.weight, layer.bias) if t is not None]
        sources = [t for layer in self.critics for t in (layer.weight, layer.bias) if t is not None]
        return targets, sources

