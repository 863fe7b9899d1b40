"""Loading the world model of a training checkpoint outside of a run, and its imagined environment.

The checkpoint is assembled in-process from the real callbacks' states, under the keys Lightning
uses (``callback.state_key``), instead of by a full ``cli.py fit``.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

from callbacks import RunLifecycle, WorldModelTraining
from nmbrl.envs import env_specs, make_env
from nmbrl.envs.termination import termination_rule
from nmbrl.errors import ConfigError
from nmbrl.world_model import EnsembleWorldModel, imagined_env_from_checkpoint, world_model_from_checkpoint

ENV = "cartpole-swingup"
OBS_DIM, ACTION_DIM = 5, 1
HPARAMS = dict(ensemble_size=4, num_elites=2, hidden_size=16, num_hidden_layers=2, weight_decays=[0.0] * 3, max_epochs=3)
ELITES = [3, 1]  # not the elites a fresh build starts with (0, 1)


def random_transitions(n: int) -> TensorDict:
    """Transitions with the env's sizes and non-trivial statistics, enough to fit the normalisers."""
    generator = torch.Generator().manual_seed(0)
    obs = 3.0 + 2.0 * torch.randn(n, OBS_DIM, generator=generator)
    action = torch.rand(n, ACTION_DIM, generator=generator) * 2 - 1
    next_obs = obs + 0.1 * torch.randn(n, OBS_DIM, generator=generator)
    reward = torch.rand(n, 1, generator=generator)
    terminated = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": obs,
            "action": action,
            "next": {"observation": next_obs, "reward": reward, "terminated": terminated, "done": terminated.clone()},
        },
        batch_size=[n],
    )


def built_model(**hparams) -> EnsembleWorldModel:
    env = make_env(ENV, seed=0)
    world_model = EnsembleWorldModel(**hparams)
    world_model.build(env_specs(env), termination_rule(ENV))
    env.close()
    return world_model


def trained_model_training(**hparams) -> WorldModelTraining:
    """The model-training callback of a run, after one short retraining."""
    torch.manual_seed(0)
    world_model = built_model(**hparams)
    world_model.fit_transitions(random_transitions(400))
    world_model.elites.copy_(torch.tensor(ELITES))
    return WorldModelTraining(world_model, every=100)


def checkpoint_of(*callbacks) -> dict:
    """A checkpoint as ``cli.py fit`` writes it: the callbacks' states and RunLifecycle's ``"nmbrl"`` record."""
    lifecycle = RunLifecycle()
    checkpoint = {"state_dict": {}, "callbacks": {c.state_key: c.state_dict() for c in (*callbacks, lifecycle)}}
    env = make_env(ENV, seed=0)
    data = SimpleNamespace(env_name=ENV, specs=env_specs(env), env_steps=400, action_repeat=1)
    env.close()
    lifecycle.on_save_checkpoint(SimpleNamespace(datamodule=data, logger=None), None, checkpoint)
    return checkpoint


@pytest.fixture(scope="module")
def training() -> WorldModelTraining:
    return trained_model_training(**HPARAMS)


@pytest.fixture(scope="module")
def checkpoint_path(training, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checkpoints") / "last.ckpt"
    torch.save(checkpoint_of(training), path)
    return path


def restored_by_callback(path: Path) -> EnsembleWorldModel:
    """The world model as a resumed run restores it: a new callback's ``load_state_dict``."""
    checkpoint = torch.load(path, weights_only=True)
    callback = WorldModelTraining(built_model(**HPARAMS))
    callback.load_state_dict(checkpoint["callbacks"]["WorldModelTraining"])
    return callback.world_model


def imagined(model: EnsembleWorldModel, observation: torch.Tensor, action: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    return model.imagine_step(observation, action)


def test_checkpoint_stores_the_world_model_under_the_callbacks_state_key(checkpoint_path):
    state = torch.load(checkpoint_path, weights_only=True)["callbacks"]["WorldModelTraining"]

    assert {k: state["hparams"][k] for k in HPARAMS} == HPARAMS


def test_load_from_checkpoint_imagines_as_the_model_the_callback_restores(checkpoint_path):
    loaded = EnsembleWorldModel.load_from_checkpoint(checkpoint_path)
    reference = restored_by_callback(checkpoint_path)
    observation, action = 3.0 + torch.randn(32, OBS_DIM), torch.rand(32, ACTION_DIM)

    for got, expected in zip(imagined(loaded, observation, action), imagined(reference, observation, action)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_load_from_checkpoint_restores_elites_normalisers_and_settings(checkpoint_path, training):
    loaded = EnsembleWorldModel.load_from_checkpoint(checkpoint_path)
    trained = training.world_model

    assert loaded.elites.tolist() == ELITES
    assert bool(loaded.trained)
    assert not trained.input_norm.mean.eq(0).all()  # the normalisers were fitted: restoring them shows
    for name in ("input_norm", "target_norm"):
        torch.testing.assert_close(getattr(loaded, name).state_dict(), getattr(trained, name).state_dict())
    assert loaded.hparams.max_epochs == 3  # a training setting: read from the stored hparams, not the weights
    assert not loaded.training
    assert loaded.device == torch.device("cpu")


def test_load_from_checkpoint_keyword_arguments_override_stored_hparams(checkpoint_path):
    loaded = EnsembleWorldModel.load_from_checkpoint(checkpoint_path, max_epochs=7)

    assert loaded.hparams.max_epochs == 7
    assert loaded.elites.tolist() == ELITES


def test_checkpoint_without_hparams_gets_its_architecture_from_the_weights():
    architecture = dict(ensemble_size=5, num_elites=2, hidden_size=8, num_hidden_layers=3)
    hparams = dict(**architecture, weight_decays=[0.0] * 4, learn_termination=True)
    training = trained_model_training(**hparams)
    checkpoint = checkpoint_of(training)
    del checkpoint["callbacks"]["WorldModelTraining"]["hparams"]  # as written before hparams were stored

    loaded = world_model_from_checkpoint(checkpoint)

    assert {k: loaded.hparams[k] for k in architecture} == architecture
    assert loaded.network.termination_head and loaded.termination_rule is None
    observation, action = torch.randn(16, OBS_DIM), torch.rand(16, ACTION_DIM)
    for got, expected in zip(imagined(loaded, observation, action), imagined(training.world_model, observation, action)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_imagined_env_from_checkpoint_rolls_out_the_loaded_model_from_given_states(checkpoint_path):
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    start_states = 3.0 + torch.randn(20, OBS_DIM)
    env = imagined_env_from_checkpoint(checkpoint, batch_size=8, start_states=start_states)
    action = torch.zeros(8, ACTION_DIM)

    start = env.reset()
    torch.manual_seed(3)
    rollout = env.rollout(5, lambda td: td.set("action", action), auto_reset=False, tensordict=start)

    assert rollout.shape == (8, 5)
    assert (rollout["observation"][:, 0, None, :] == start_states[None]).all(-1).any(-1).all()
    expected_next, expected_reward, _, _ = imagined(world_model_from_checkpoint(checkpoint), start["observation"], action, seed=3)
    torch.testing.assert_close(rollout["next", "observation"][:, 0], expected_next, rtol=0, atol=0)
    torch.testing.assert_close(rollout["next", "reward"][:, 0], expected_reward, rtol=0, atol=0)


def test_sac_only_checkpoint_is_a_config_error(tmp_path):
    path = tmp_path / "sac.ckpt"
    torch.save(checkpoint_of(), path)

    with pytest.raises(ConfigError, match="trained without"):
        EnsembleWorldModel.load_from_checkpoint(path)
    with pytest.raises(ConfigError, match="trained without"):
        imagined_env_from_checkpoint(torch.load(path, weights_only=True), batch_size=4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"state_dict": {"weight": torch.zeros(2)}}, "not an NMBRL checkpoint"),
        (b"not a checkpoint", "cannot be read"),
        (None, "no such"),
    ],
    ids=["lightning-checkpoint", "garbage", "missing"],
)
def test_non_nmbrl_file_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "other.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)

    with pytest.raises(ConfigError, match=message):
        EnsembleWorldModel.load_from_checkpoint(path)
