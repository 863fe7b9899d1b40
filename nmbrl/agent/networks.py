"""Builders for the SAC actor and critic."""

from __future__ import annotations

from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import TensorSpec
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator


def make_actor(observation_dim: int, action_spec: TensorSpec, hidden_sizes: list[int]) -> ProbabilisticActor:
    """A tanh-squashed Gaussian policy: ``observation -> action`` within the action bounds."""
    action_dim = action_spec.shape[-1]
    net = nn.Sequential(
        MLP(observation_dim, 2 * action_dim, num_cells=hidden_sizes, activation_class=nn.ReLU),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0"),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=action_spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": action_spec.space.low, "high": action_spec.space.high},
        return_log_prob=False,
    )


def make_critic(observation_dim: int, action_dim: int, hidden_sizes: list[int], layer_norm: bool = False) -> ValueOperator:
    """A Q network: ``(observation, action) -> state_action_value``.

    With ``layer_norm``, each hidden layer is ``Linear -> LayerNorm -> ReLU``, which keeps the
    critic's features bounded on states far from the data it was trained on.
    """
    norm = {}
    if layer_norm:
        norm = {"norm_class": nn.LayerNorm, "norm_kwargs": [{"normalized_shape": width} for width in hidden_sizes]}
    net = MLP(observation_dim + action_dim, 1, num_cells=hidden_sizes, activation_class=nn.ReLU, **norm)
    return ValueOperator(net, in_keys=["observation", "action"])
