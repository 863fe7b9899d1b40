"""Under DDP the world model trains on the real transitions of every rank: the gather, in two real processes."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tensordict import TensorDict

from callbacks.model_training import gather_transitions


def transitions_of(rank: int) -> TensorDict:
    """Three transitions whose every value says which rank collected them."""
    return TensorDict(
        {
            "observation": torch.full((3, 2), float(rank)) + torch.arange(3.0).unsqueeze(-1),
            "next": {"terminated": torch.tensor([[rank == 1], [False], [True]])},
        },
        batch_size=[3],
    )


def gather_on(rank: int, world_size: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        gathered = gather_transitions(SimpleNamespace(world_size=world_size), transitions_of(rank))
        torch.save(gathered.to_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_gets_all_ranks_transitions_in_rank_order_with_their_dtypes(tmp_path: Path) -> None:
    mp.spawn(gather_on, args=(2, free_port(), str(tmp_path)), nprocs=2)

    expected = torch.cat([transitions_of(0), transitions_of(1)])
    for rank in (0, 1):
        gathered = TensorDict(torch.load(tmp_path / f"rank{rank}.pt"), batch_size=[6])
        assert gathered["next", "terminated"].dtype == torch.bool  # sent as floats, given back as bools
        assert (gathered == expected).all()
