"""Shared weights and the shared real buffer, written by one process and read by another."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from nmbrl.concurrent.shared import CONTEXT, SharedWeights, make_shared_replay_buffer
from nmbrl.data import make_replay_buffer

SIZE = 200_000


def transitions(first: int, n: int) -> TensorDict:
    """``n`` transitions whose observations hold their number, ``first`` to ``first + n - 1``."""
    number = torch.arange(first, first + n, dtype=torch.float32).unsqueeze(-1)
    flag = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": number.expand(n, 3).clone(),
            "action": torch.zeros(n, 1),
            "next": {"observation": number.expand(n, 3) + 1, "reward": number, "done": flag, "terminated": flag.clone()},
        },
        batch_size=[n],
    )


def publish_versions(weights: SharedWeights, count: int) -> None:
    for version in range(1, count + 1):
        weights.publish(TensorDict({"w": torch.full((SIZE,), float(version))}))


def write_transitions(buffer, count: int) -> None:
    for number in range(1, count + 1):
        buffer.extend(transitions(number, 1))


def test_a_reader_never_sees_weights_from_two_versions_while_the_writer_publishes():
    weights = SharedWeights(TensorDict({"w": torch.zeros(SIZE)}))
    writer = CONTEXT.Process(target=publish_versions, args=(weights, 150))
    writer.start()
    target = TensorDict({"w": torch.zeros(SIZE), "published_at": torch.zeros((), dtype=torch.float64)})
    seen = set()
    while writer.is_alive() or weights.version.value < 150:
        version = weights.read_into(target)
        values = target["w"].unique()
        assert values.tolist() == [float(version)] or version == 0, f"version {version} read as a mix of {values[:5]}"
        seen.add(version)
    writer.join()
    assert writer.exitcode == 0
    assert len(seen) > 2 and weights.version.value == 150
    assert target["published_at"] > 0


def test_read_into_copies_only_newer_versions():
    weights = SharedWeights(TensorDict({"w": torch.zeros(3)}))
    target = TensorDict({"w": torch.zeros(3)})
    assert weights.read_into(target, newer_than=0) is None
    assert weights.publish(TensorDict({"w": torch.ones(3)})) == 1
    assert weights.read_into(target, newer_than=0) == 1 and target["w"].tolist() == [1.0, 1.0, 1.0]
    assert weights.read_into(target, newer_than=1) is None


def test_a_child_process_fills_the_shared_buffer_that_the_parent_reads():
    buffer = make_shared_replay_buffer(50, transitions(0, 1)[0])
    assert len(buffer) == 0
    writer = CONTEXT.Process(target=write_transitions, args=(buffer, 30))
    writer.start()
    writer.join()
    assert writer.exitcode == 0
    assert len(buffer) == 30
    assert buffer[:]["observation"][:, 0].tolist() == list(range(1, 31))
    assert buffer.sample(8)["observation"].min() >= 1  # no unwritten rows are sampled


def test_the_shared_buffer_starts_with_the_newest_contents_of_the_buffer_it_replaces():
    old = make_replay_buffer(100)
    old.extend(transitions(1, 15))
    buffer = make_shared_replay_buffer(10, transitions(0, 1)[0], contents=old)
    assert buffer[:]["observation"][:, 0].tolist() == list(range(6, 16))
