"""A test-only callback: each DDP rank writes digests of its parameters and data at the end of fit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.model_training import world_model_of


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ReplicaDigest(Callback):
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data = trainer.datamodule
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "agent": digest(pl_module),
            "world_model": digest(world_model_of(trainer)),
            "first_observations": data.real_buffer[:5]["observation"].tolist(),
            "env_steps": data.env_steps,
        }
        out = Path(os.environ["NMBRL_PROBE_DIR"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps(report))
