"""The imagined environment: resets from given observations or from ``start_states``, and rollouts."""

import pytest
import torch
from tensordict import TensorDict, TensorDictBase

from nmbrl.envs import env_specs, make_env
from nmbrl.envs.termination import termination_rule
from nmbrl.world_model import EnsembleWorldModel, ImaginedEnv

ENV = "cartpole-swingup"
OBS_DIM = 5
BATCH = 6


@pytest.fixture(scope="module")
def real_env():
    env = make_env(ENV, seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def world_model(real_env) -> EnsembleWorldModel:
    """A tiny ensemble, built for the env but never trained."""
    torch.manual_seed(0)
    model = EnsembleWorldModel(ensemble_size=3, num_elites=2, hidden_size=8, num_hidden_layers=1, weight_decays=[0.0, 0.0])
    model.build(env_specs(real_env), termination_rule(ENV))
    return model


def zero_policy(tensordict: TensorDictBase) -> TensorDictBase:
    return tensordict.set("action", torch.zeros(*tensordict.batch_size, 1))


def rows_of(observations: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Whether each row of ``observations`` is one of the rows of ``pool``."""
    return (observations[:, None, :] == pool[None, :, :]).all(-1).any(-1)


def test_bare_reset_draws_rows_of_the_start_state_tensor_with_replacement(world_model, real_env):
    pool = torch.randn(2, OBS_DIM)
    env = ImaginedEnv(world_model, real_env, batch_size=64, start_states=pool)

    observation = env.reset()["observation"]

    assert observation.shape == (64, OBS_DIM)
    assert rows_of(observation, pool).all()
    # With replacement: 64 draws from 2 rows repeat both.
    assert rows_of(pool, observation).all()


def test_bare_resets_use_the_global_rng(world_model, real_env):
    env = ImaginedEnv(world_model, real_env, batch_size=BATCH, start_states=torch.randn(100, OBS_DIM))

    torch.manual_seed(1)
    first = env.reset()["observation"]
    second = env.reset()["observation"]
    torch.manual_seed(1)
    again = env.reset()["observation"]

    assert not torch.equal(first, second)
    assert torch.equal(first, again)


def test_bare_reset_calls_the_start_state_function_with_the_batch_size(world_model, real_env):
    asked = []

    def start_states(batch_size: int) -> torch.Tensor:
        asked.append(batch_size)
        return torch.arange(batch_size * OBS_DIM, dtype=torch.float32).reshape(batch_size, OBS_DIM)

    env = ImaginedEnv(world_model, real_env, batch_size=BATCH, start_states=start_states)

    observation = env.reset()["observation"]

    assert asked == [BATCH]
    assert torch.equal(observation, start_states(BATCH))


def test_rollout_with_auto_reset_starts_from_the_start_states(world_model, real_env):
    pool = torch.randn(10, OBS_DIM)
    env = ImaginedEnv(world_model, real_env, batch_size=BATCH, start_states=pool)

    rollout = env.rollout(10, zero_policy)

    assert rollout.shape == (BATCH, 10)
    assert rows_of(rollout["observation"][:, 0], pool).all()
    assert rollout["next", "observation"].shape == (BATCH, 10, OBS_DIM)
    assert rollout["next", "model_uncertainty"].shape == (BATCH, 10, 1)
    assert torch.isfinite(rollout["next", "observation"]).all()


def test_explicit_reset_ignores_start_states_and_rolls_out_as_without_them(world_model, real_env):
    """The path of ``branched_rollout``: ``rollout(..., auto_reset=False, tensordict=env.reset(start))``."""
    start = TensorDict(observation=torch.randn(BATCH, OBS_DIM), batch_size=[BATCH])
    rollouts = []
    for start_states in (None, torch.randn(10, OBS_DIM)):
        env = ImaginedEnv(world_model, real_env, batch_size=BATCH, start_states=start_states)
        torch.manual_seed(2)
        rollouts.append(env.rollout(4, zero_policy, auto_reset=False, tensordict=env.reset(start), break_when_any_done=False))

    without, with_start_states = rollouts
    assert torch.equal(without["observation"][:, 0], start["observation"])
    assert torch.equal(with_start_states["observation"], without["observation"])
    assert torch.equal(with_start_states["next", "observation"], without["next", "observation"])


def test_bare_reset_without_start_states_says_what_to_give(world_model, real_env):
    env = ImaginedEnv(world_model, real_env, batch_size=BATCH)

    with pytest.raises(ValueError, match=r"reset\(TensorDict\(observation=") as error:
        env.reset()
    assert "start_states=" in str(error.value)


@pytest.mark.parametrize("shape", [(10, OBS_DIM + 1), (OBS_DIM,), (0, OBS_DIM)], ids=["wrong-size", "one-dim", "empty"])
def test_start_states_of_the_wrong_shape_are_refused_at_construction(world_model, real_env, shape):
    with pytest.raises(ValueError, match=f"observations of this env have size {OBS_DIM}"):
        ImaginedEnv(world_model, real_env, batch_size=BATCH, start_states=torch.zeros(shape))


def test_start_state_function_of_the_wrong_shape_is_refused_at_reset(world_model, real_env):
    env = ImaginedEnv(world_model, real_env, batch_size=BATCH, start_states=lambda n: torch.zeros(n, OBS_DIM - 1))

    with pytest.raises(ValueError, match=rf"expected \({BATCH}, {OBS_DIM}\)"):
        env.reset()


def test_start_states_of_another_type_are_refused(world_model, real_env):
    with pytest.raises(TypeError, match="start_states is a list"):
        ImaginedEnv(world_model, real_env, batch_size=BATCH, start_states=[[0.0] * OBS_DIM])
