"""Random streams: sync mode draws its collection and retrainings where concurrent mode's role processes do."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch
from lightning.pytorch import seed_everything
from torchrl.envs.utils import RandomPolicy

from callbacks.model_training import WorldModelTraining
from nmbrl.concurrent.supervisor import RoleProcess
from nmbrl.data import RLDataModule
from nmbrl.random_streams import COLLECTOR, WORLD_MODEL, RandomStream, role_seed
from tests.concurrent.test_supervisor import Drawer


def draw() -> list[float]:
    return [*torch.rand(2).tolist(), *np.random.rand(2).tolist(), random.random()]


def test_a_stream_draws_what_its_role_process_draws():
    # The link between the modes: a role process of the run and the run's stream of that name
    # start from the same state, so sync mode's collection draws what the collector process would.
    for name in (COLLECTOR, WORLD_MODEL):
        seed_everything(11, verbose=False)
        role = RoleProcess(Drawer(name=name))
        role.start()
        in_the_process = role.results.get(timeout=60)
        role.process.join(timeout=60)
        with RandomStream.of_run(name).active():
            assert draw() == in_the_process


def test_a_stream_leaves_the_main_generators_where_they_were_and_goes_on_where_it_stopped():
    seed_everything(5, verbose=False)
    main_alone = [draw(), draw()]
    seed_everything(5, verbose=False)
    stream = RandomStream(role_seed(5, COLLECTOR))
    before = draw()
    with stream.active():
        first = draw()
    after = draw()
    assert [before, after] == main_alone  # the block's draws did not move the main generators
    assert torch.initial_seed() == 5  # the run's seed, from which the streams are derived
    with stream.active():
        second = draw()

    seed_everything(role_seed(5, COLLECTOR), verbose=False)
    assert [first, second] == [draw(), draw()]  # one stream, continued where it stopped
    assert first not in main_alone


def test_sync_retraining_draws_from_the_world_model_stream(monkeypatch):
    # What the retraining draws comes from the world-model stream: the agent's next draws are as if
    # no retraining had happened, and the retraining draws what a world-model process would.
    drawn = []
    monkeypatch.setattr("callbacks.model_training.train_world_model", lambda *args, **kwargs: drawn.append(draw()) or {})
    monkeypatch.setattr("callbacks.model_training.log_now", lambda *args: None)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(env_steps=0, real_buffer=[]), strategy=None)
    callback = WorldModelTraining(world_model=None, every=100)

    seed_everything(2, verbose=False)
    agent_alone = draw()
    seed_everything(2, verbose=False)
    callback.on_train_batch_start(trainer, None, None, 0)
    assert draw() == agent_alone
    seed_everything(role_seed(2, WORLD_MODEL), verbose=False)
    assert drawn == [draw()]


def test_sync_collection_draws_from_the_collector_stream():
    def collect_random_actions(run_seed: int) -> tuple[torch.Tensor, list[float]]:
        data = RLDataModule(env="cartpole-swingup", seed=0, random_steps=40, epoch_length=40, action_repeat=4)
        data.setup("fit")
        policy = RandomPolicy(data.env.action_spec)
        data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(policy=policy, device=torch.device("cpu")), current_epoch=0)
        seed_everything(run_seed, verbose=False)
        data.collect(10)
        return data.real_buffer[:]["action"], draw()

    actions, agent_draws = collect_random_actions(run_seed=3)
    seed_everything(3, verbose=False)
    assert agent_draws == draw()  # the collection did not move the agent's generators
    assert torch.equal(collect_random_actions(run_seed=3)[0], actions)
    assert not torch.equal(collect_random_actions(run_seed=4)[0], actions)  # the stream follows the run's seed


def test_a_stream_goes_on_from_a_weights_only_checkpoint(tmp_path):
    stream = RandomStream(role_seed(7, WORLD_MODEL))
    with stream.active():
        draw()
    torch.save(stream.state_dict(), tmp_path / "stream.pt")
    with stream.active():
        expected = draw()
    restored = RandomStream.from_state_dict(torch.load(tmp_path / "stream.pt", weights_only=True))
    with restored.active():
        assert draw() == expected
    assert restored.seed == stream.seed


def test_a_resumed_sync_run_collects_on_from_where_its_stream_stopped():
    # The data module's checkpoint holds the collector stream, as RunLifecycle's holds the main
    # generators: a resumed run does not draw the start of the stream again.
    def data_module() -> RLDataModule:
        data = RLDataModule(env="cartpole-swingup", seed=0, random_steps=80, epoch_length=40, action_repeat=4)
        data.setup("fit")
        data.trainer = SimpleNamespace(
            lightning_module=SimpleNamespace(policy=RandomPolicy(data.env.action_spec), device=torch.device("cpu")),
            current_epoch=0,
            global_rank=0,
        )
        return data

    seed_everything(3, verbose=False)
    whole = data_module()
    whole.collect(10)
    checkpoint = whole.state_dict()
    whole.collect(20)
    resumed = data_module()
    resumed.load_state_dict(checkpoint)
    resumed.collect(10)
    after_resume, after_checkpoint = resumed.real_buffer[10:20]["action"], whole.real_buffer[10:30]["action"]
    # The same stretch of the stream: the rebuilt TorchRL collector takes a draw or two on construction.
    assert any(torch.equal(after_resume, after_checkpoint[skip : skip + 10]) for skip in range(3))
    assert not torch.equal(after_resume, whole.real_buffer[:10]["action"])
