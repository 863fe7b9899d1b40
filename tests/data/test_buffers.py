"""Replay buffers: MBPO's model buffer size, the per-sample real/imagined mix, data module checks."""

import io
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tensordict import TensorDict, TensorDictBase
from torchrl.data import ReplayBuffer

from nmbrl.data import (
    RLDataModule,
    buffer_state,
    load_buffer_state,
    make_replay_buffer,
    model_buffer_capacity,
    sample_mixed_batch,
)
from nmbrl.data.buffers import make_replay_buffer, resized, sample_mixed_batches
from nmbrl.errors import ConfigError

BATCH_SIZE = 256


def buffer_of(size: int, reward: float) -> ReplayBuffer:
    """A buffer of ``size`` transitions whose reward marks where they came from."""
    transitions = TensorDict(
        {
            "observation": torch.randn(size, 3),
            "action": torch.randn(size, 1),
            "next": {
                "observation": torch.randn(size, 3),
                "reward": torch.full((size, 1), reward),
                "done": torch.zeros(size, 1, dtype=torch.bool),
                "terminated": torch.zeros(size, 1, dtype=torch.bool),
            },
        },
        batch_size=[size],
    )
    buffer = make_replay_buffer(size)
    buffer.extend(transitions)
    return buffer


def real_rows(batch: TensorDict) -> int:
    return int((batch["next", "reward"] == 1.0).sum())


@pytest.fixture(scope="module")
def real() -> ReplayBuffer:
    return buffer_of(1000, reward=1.0)


@pytest.fixture(scope="module")
def imagined() -> ReplayBuffer:
    return buffer_of(1000, reward=0.0)


# --- model buffer size ------------------------------------------------------------------------


def test_model_buffer_capacity_of_the_default_settings():
    # 15 steps x 100k start states x 4 rollouts per epoch x 1 epoch.
    capacity = model_buffer_capacity(horizon=15, rollout_batch_size=100_000, epoch_length=1000, rollout_every=250, retain_epochs=1)
    assert capacity == 6_000_000


def test_model_buffer_capacity_of_the_humanoid_settings():
    # 25 steps x 100k start states x 1 rollout per epoch x 5 epochs.
    capacity = model_buffer_capacity(horizon=25, rollout_batch_size=100_000, epoch_length=1000, rollout_every=1000, retain_epochs=5)
    assert capacity == 12_500_000


def test_model_buffer_holds_at_least_one_rollout_when_rollouts_are_rarer_than_epochs():
    assert model_buffer_capacity(horizon=1, rollout_batch_size=10, epoch_length=250, rollout_every=1000, retain_epochs=1) == 10


# --- mixed batches ----------------------------------------------------------------------------


def test_mixed_batches_draw_real_rows_per_sample(real, imagined):
    torch.manual_seed(0)
    batches, ratio = 200, 0.05

    counts = torch.tensor([real_rows(sample_mixed_batch(real, imagined, BATCH_SIZE, ratio)) for _ in range(batches)])

    fraction = counts.sum().item() / (batches * BATCH_SIZE)
    standard_error = math.sqrt(ratio * (1 - ratio) / (batches * BATCH_SIZE))
    assert abs(fraction - ratio) < 4 * standard_error
    # Per-sample mixing: the count of real rows is Binomial(256, 0.05), variance ~12.2, not fixed.
    assert len(set(counts.tolist())) > 5
    assert 6.0 < counts.float().var().item() < 24.0


def test_every_mixed_batch_has_the_batch_size(real, imagined):
    torch.manual_seed(1)
    for _ in range(20):
        assert sample_mixed_batch(real, imagined, BATCH_SIZE, 0.5).shape == (BATCH_SIZE,)


def test_real_ratio_one_gives_only_real_rows(real, imagined):
    torch.manual_seed(2)
    for _ in range(20):
        assert real_rows(sample_mixed_batch(real, imagined, BATCH_SIZE, 1.0)) == BATCH_SIZE


def test_real_ratio_zero_gives_only_imagined_rows(real, imagined):
    torch.manual_seed(3)
    for _ in range(20):
        assert real_rows(sample_mixed_batch(real, imagined, BATCH_SIZE, 0.0)) == 0


@pytest.mark.parametrize("model_buffer", ["none", "empty"])
def test_without_imagined_data_the_batch_is_real(real, model_buffer):
    torch.manual_seed(4)
    model = None if model_buffer == "none" else make_replay_buffer(100)

    batch = sample_mixed_batch(real, model, BATCH_SIZE, 0.05)

    assert batch.shape == (BATCH_SIZE,)
    assert real_rows(batch) == BATCH_SIZE


def test_an_env_steps_batches_are_drawn_in_one_call_per_buffer_and_mixed_per_sample(real, imagined, monkeypatch):
    torch.manual_seed(5)
    calls = []
    for buffer in (real, imagined):
        sample = buffer.sample
        monkeypatch.setattr(buffer, "sample", lambda n, sample=sample: calls.append(n) or sample(n))
    updates, ratio = 400, 0.05

    batches = sample_mixed_batches(real, imagined, updates, BATCH_SIZE, ratio)

    assert batches.shape == (updates, BATCH_SIZE)
    assert len(calls) == 2 and sum(calls) == updates * BATCH_SIZE
    counts = (batches["next", "reward"] == 1.0).squeeze(-1).sum(1).float()
    standard_error = math.sqrt(ratio * (1 - ratio) / (updates * BATCH_SIZE))
    assert abs(counts.mean().item() / BATCH_SIZE - ratio) < 4 * standard_error
    # Each batch is its own Binomial(256, 0.05) draw (variance ~12.2), as with one call per batch.
    assert 6.0 < counts.var().item() < 24.0
    # Real rows are spread over the batch, not gathered at its start.
    first_half = (batches["next", "reward"][:, : BATCH_SIZE // 2] == 1.0).sum().item()
    assert 0.35 < first_half / counts.sum().item() < 0.65


def test_the_rows_of_bulk_batches_are_transitions_of_the_buffers(real, imagined):
    torch.manual_seed(6)
    batches = sample_mixed_batches(real, imagined, 3, BATCH_SIZE, 0.5)
    stored = torch.cat([real[:]["observation"], imagined[:]["observation"]])

    for row, reward in zip(batches["observation"].flatten(0, 1), batches["next", "reward"].flatten()):
        matches = (stored == row).all(-1).nonzero().flatten()
        assert len(matches) >= 1 and all((m < 1000) == (reward.item() == 1.0) for m in matches.tolist())


@pytest.mark.parametrize("model_buffer", ["none", "empty"])
def test_without_imagined_data_bulk_batches_are_real(real, model_buffer):
    model = None if model_buffer == "none" else make_replay_buffer(100)

    batches = sample_mixed_batches(real, model, 5, BATCH_SIZE, 0.05)

    assert batches.shape == (5, BATCH_SIZE) and real_rows(batches) == 5 * BATCH_SIZE


# --- data module checks ---


@pytest.mark.parametrize(("every", "fine"), [(7, False), (10, True), (0, True)])
def test_a_checkpoint_interval_the_updates_step_over_is_a_config_error(every, fine):
    data = RLDataModule(updates_per_step=5)
    data.trainer = type("Trainer", (), {"checkpoint_callbacks": [ModelCheckpoint(every_n_train_steps=every)]})()

    if fine:
        data.check_checkpoint_interval()
    else:
        with pytest.raises(ConfigError, match="every_n_train_steps=7 is not a multiple of data.updates_per_step=5.*such as 10"):
            data.check_checkpoint_interval()




@pytest.mark.parametrize("real_ratio", [1.5, -0.1])
def test_real_ratio_outside_zero_one_is_a_config_error(real_ratio):
    with pytest.raises(ConfigError, match=f"real_ratio={real_ratio}"):
        RLDataModule(env="cartpole-swingup", real_ratio=real_ratio)


@pytest.mark.parametrize("env", ["NoSuchEnv-v0", "cartpole-nosuchtask"])
def test_unknown_env_is_a_config_error_that_shows_both_naming_styles(env):
    with pytest.raises(ConfigError) as error:
        RLDataModule(env=env)

    message = str(error.value)
    assert env in message
    assert "Hopper-v5" in message
    assert "cartpole-swingup" in message


def test_known_env_names_are_accepted_without_building_the_env():
    for env in ("Hopper-v5", "cartpole-swingup"):
        data = RLDataModule(env=env)
        assert data.env_name == env and data.env is None


def test_model_buffer_can_live_in_memory_mapped_files(tmp_path) -> None:
    data = RLDataModule(env="InvertedPendulum-v5", model_buffer_dir=str(tmp_path))
    data.resize_model_buffer(100)
    data.model_buffer.extend(TensorDict({"observation": torch.arange(30.0).reshape(30, 1)}, [30]))
    data.resize_model_buffer(200)  # growing keeps what was there
    assert len(data.model_buffer) == 30
    assert sorted(data.model_buffer[:]["observation"].flatten().tolist()) == list(range(30))
    assert any(tmp_path.rglob("*.memmap")), "the model buffer should be backed by files in model_buffer_dir"
    assert len(list(tmp_path.iterdir())) == 1, "the files of the smaller buffer should be gone"

    data.teardown("fit")
    assert not any(tmp_path.iterdir())


def test_resizing_a_buffer_that_has_wrapped_keeps_the_newest_rows_and_overwrites_the_oldest_first() -> None:
    def write_numbers(buffer: ReplayBuffer) -> list[int]:
        return [int(r) for r in buffer[:]["next", "reward"].flatten()]

    ring = make_replay_buffer(5)
    ring.extend(numbered(7))  # rows 5 and 6 have overwritten 0 and 1: storage order 5, 6, 2, 3, 4
    assert write_numbers(ring) == [5, 6, 2, 3, 4]

    assert write_numbers(resized(ring, 3)) == [4, 5, 6]  # shrinking keeps the newest, not storage order's last (2, 3, 4)

    grown = resized(ring, 7)
    grown.extend(numbered(3, start=100))  # fills the two free rows, then overwrites one
    assert sorted(write_numbers(grown)) == [3, 4, 5, 6, 100, 101, 102]  # 2, the oldest, went first (not 5, the second newest)


def test_scratch_folders_of_dead_processes_are_removed_by_the_next_run(tmp_path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    host = socket.gethostname()
    orphan = tmp_path / f"model_buffer_{host}_pid{dead_pid}_rank0_abc"
    live = tmp_path / f"model_buffer_{host}_pid{os.getppid()}_rank0_def"  # another run, still going
    elsewhere = tmp_path / f"model_buffer_otherhost_pid{dead_pid}_rank0_ghi"  # a process of another machine
    for folder in (orphan, live, elsewhere):
        folder.mkdir()

    data = RLDataModule(env="InvertedPendulum-v5", model_buffer_dir=str(tmp_path))
    data.resize_model_buffer(100)

    assert not orphan.exists() and live.exists() and elsewhere.exists()


# --- checkpoints -------------------------------------------------------------------------------


def test_without_checkpoint_model_buffer_only_the_real_data_is_saved() -> None:
    data = RLDataModule(env="InvertedPendulum-v5", buffer_size=50, random_steps=0, checkpoint_model_buffer=False)
    data.setup("fit")
    data.real_buffer.extend(buffer_of(40, reward=1.0)[:])
    data.resize_model_buffer(30)
    data.model_buffer.extend(buffer_of(20, reward=0.0)[:])
    data.env_steps = 40

    state = data.state_dict()
    restored = RLDataModule(env="InvertedPendulum-v5", buffer_size=50, random_steps=0)
    restored.setup("fit")
    restored.load_state_dict(state)

    assert "model_buffer" not in state
    assert restored.model_buffer is None  # left for BranchedRollouts to refill
    assert restored.env_steps == 40 and len(restored.real_buffer) == 40


def test_data_module_state_round_trips_both_buffers_and_the_step_count() -> None:
    data = RLDataModule(env="InvertedPendulum-v5", buffer_size=50, random_steps=0)
    data.setup("fit")
    data.real_buffer.extend(buffer_of(70, reward=1.0)[:])  # wraps around: the write position matters
    data.resize_model_buffer(30)
    data.model_buffer.extend(buffer_of(20, reward=0.0)[:])
    data.env_steps = 70

    restored = RLDataModule(env="InvertedPendulum-v5", buffer_size=50, random_steps=0)
    restored.setup("fit")
    restored.load_state_dict(data.state_dict())

    assert restored.env_steps == 70 and restored.model_buffer_capacity == 30
    for name in ("real_buffer", "model_buffer"):
        original, copy = getattr(data, name), getattr(restored, name)
        assert len(copy) == len(original)
        assert (copy[:] == original[:]).all()
    # Both continue writing at the same place.
    new = buffer_of(5, reward=2.0)[:]
    data.real_buffer.extend(new)
    restored.real_buffer.extend(new)
    assert (restored.real_buffer[:] == data.real_buffer[:]).all()


def saved(state: dict) -> bytes:
    """``state`` as ``torch.save`` writes it to a checkpoint."""
    file = io.BytesIO()
    torch.save(state, file)
    return file.getvalue()


def test_a_buffer_that_has_not_wrapped_saves_only_its_filled_rows() -> None:
    buffer = make_replay_buffer(10_000)
    buffer.extend(buffer_of(100, reward=1.0)[:])

    state = buffer_state(buffer)
    # 100 of 10,000 rows: a hundredth of the full storage, give or take the file's overhead.
    assert len(saved(state)) < len(saved(buffer.state_dict())) / 20

    restored = make_replay_buffer(10_000)
    load_buffer_state(restored, torch.load(io.BytesIO(saved(state)), weights_only=True))
    assert len(restored) == 100 and (restored[:] == buffer[:]).all()
    new = buffer_of(5, reward=2.0)[:]
    buffer.extend(new)
    restored.extend(new)  # the writer goes on at row 100, as in the original
    assert len(restored) == 105 and (restored[:] == buffer[:]).all()


@pytest.mark.parametrize("rows", [20, 70], ids=["partly-filled", "wrapped"])
def test_a_memory_mapped_buffer_is_saved_as_plain_tensors_and_restored_into_its_files(tmp_path, rows: int) -> None:
    buffer = make_replay_buffer(50, scratch_dir=str(tmp_path / "a"))
    buffer.extend(buffer_of(rows, reward=0.0)[:])

    # As Lightning resumes: torch.load(weights_only=True) refuses memory-mapped tensor subclasses.
    state = torch.load(io.BytesIO(saved(buffer_state(buffer))), weights_only=True)
    restored = make_replay_buffer(50, scratch_dir=str(tmp_path / "b"))
    load_buffer_state(restored, state)

    storage = restored.storage._storage
    # In files of its own scratch folder: a plain `load_state_dict` would map anonymous memory instead.
    assert storage.shape[0] == 50 and Path(storage["observation"].filename).parent == tmp_path / "b"
    assert len(restored) == len(buffer) and (restored[:] == buffer[:]).all()
    new = buffer_of(5, reward=2.0)[:]
    buffer.extend(new)
    restored.extend(new)
    assert (restored[:] == buffer[:]).all()


def test_a_full_storage_state_of_an_earlier_checkpoint_still_loads() -> None:
    buffer = make_replay_buffer(50)
    buffer.extend(buffer_of(20, reward=1.0)[:])

    restored = make_replay_buffer(50)
    load_buffer_state(restored, buffer.state_dict())  # what checkpoints held before compaction

    assert len(restored) == 20 and (restored[:] == buffer[:]).all()


def numbered(size: int, start: int = 0) -> TensorDictBase:
    """``size`` transitions whose reward is their write number, from ``start``."""
    transitions = buffer_of(size, reward=0.0)[:]
    transitions["next", "reward"] = torch.arange(start, start + size, dtype=torch.float32).unsqueeze(-1)
    return transitions


@pytest.mark.parametrize(
    ("written", "capacity", "kept"),
    [
        (25, 6, range(19, 25)),  # wrapped, shrunk: the newest 6 (before: rows of the old ring's end, some old)
        (25, 15, range(15, 25)),  # wrapped, grown: all 10, in write order, with room for 5 more
        (7, 4, range(3, 7)),  # not wrapped, shrunk: the newest 4
        (25, 10, None),  # the same capacity: row for row, as before
    ],
)
def test_a_resume_with_another_buffer_size_keeps_the_newest_transitions_in_write_order(written, capacity, kept) -> None:
    buffer = make_replay_buffer(10)
    buffer.extend(numbered(written))
    state = torch.load(io.BytesIO(saved(buffer_state(buffer))), weights_only=True)

    restored = make_replay_buffer(capacity)
    load_buffer_state(restored, state)

    rewards = restored[:]["next", "reward"].squeeze(-1).tolist()
    if kept is None:
        assert rewards == buffer[:]["next", "reward"].squeeze(-1).tolist()
        return
    assert rewards == list(map(float, kept))
    # The next writes fill any room, then replace the oldest row first: as a buffer that had taken these writes.
    new = capacity - len(kept) + 1
    restored.extend(numbered(new, start=100))
    expected = [*list(kept)[1:], *range(100, 100 + new)]
    assert sorted(restored[:]["next", "reward"].squeeze(-1).tolist()) == list(map(float, expected))
