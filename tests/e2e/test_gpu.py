"""The GPU path, end to end: ``--trainer.accelerator gpu`` in both modes, resuming on a GPU, the compiled update.

These run only where CUDA is available. The development machines and CI have no GPU, so CI
skips them; where a session has the GPU machine, run ``python -m pytest tests/e2e/test_gpu.py``
there. The CPU-side halves of what they check run everywhere: ``tests/test_rollouts.py`` (the
world model joins the agent's device at fit start) and ``tests/world_model/test_module.py`` (the
optimizer's state moves with it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runner import TINY, TINY_MBPO, only_run, run_cli, store_args
from tensordict import TensorDict
from test_audit_cli import audit, audited_at_the_floor
from torch import nn
from torchrl.data import Bounded

from nmbrl.agent import SACAgent
from nmbrl.agent.sac import compile_losses
from nmbrl.agent.update import Networks, as_batch
from nmbrl.concurrent.shared import SharedWeights, module_weights
from nmbrl.envs import EnvSpecs
from nmbrl.world_model import EnsembleWorldModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# A gymnasium MuJoCo task rather than the configs' dm_control one: the lent GPU machines have neither
# installed, and the dm_control wheel (56 MB) would take most of what one call can carry there (64 MiB).
ON_GPU = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--data.env", "InvertedPendulum-v5"]


def test_weights_of_a_gpu_module_are_published_through_host_shared_memory():
    source, reader = nn.Linear(3, 2).cuda(), nn.Linear(3, 2).cuda()
    weights = SharedWeights(module_weights(source))

    assert all(t.device.type == "cpu" and t.is_shared() for slot in weights.slots for t in slot.values(True, True))
    weights.publish(module_weights(source))
    assert weights.read_into(module_weights(reader)) == 1
    assert torch.equal(reader.weight, source.weight)


def random_transitions(n: int, obs_dim: int = 3, action_dim: int = 1) -> TensorDict:
    observation = torch.randn(n, obs_dim)
    return TensorDict(
        {
            "observation": observation,
            "action": torch.rand(n, action_dim) * 2 - 1,
            "next": {
                "observation": observation + 0.1 * torch.randn(n, obs_dim),
                "reward": torch.randn(n, 1),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                "done": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def test_a_world_model_trained_on_the_cpu_trains_on_after_moving_to_the_gpu():
    # Resuming: the checkpoint's Adam moments are loaded on the CPU before the model follows the agent.
    model = EnsembleWorldModel(ensemble_size=2, num_elites=1, hidden_size=16, num_hidden_layers=1, weight_decays=[0.0, 0.0], max_epochs=2)
    model.build(EnvSpecs(observation_dim=3, action_spec=Bounded(-1, 1, shape=(1,))), termination_rule=None)
    model.fit_transitions(random_transitions(500))

    model.move_to("cuda")
    metrics = model.fit_transitions(random_transitions(500).to("cuda"))

    assert metrics["model/epochs"] >= 1
    assert {v.device.type for state in model.optimizer.state.values() for v in state.values()} == {"cuda"}


def test_mbpo_fits_and_resumes_on_a_gpu(store: Path):
    result = run_cli("fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, *ON_GPU, store=store)
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run(store)
    assert {"rollout/horizon", "model/holdout_mse", "eval/return_mean"} <= set(run.data.metrics)

    resumed = run_cli(
        "fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, *ON_GPU, "--trainer.max_epochs", "3", "--ckpt_path", "last",
        store=store,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_concurrent_mode_fits_on_a_gpu(store: Path):
    args = ["fit", "--config", "configs/mbpo_async.yaml", *TINY, *TINY_MBPO, "--collection.log_every_s", "1", *ON_GPU]
    result = run_cli(*args, store=store)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = set(only_run(store).data.metrics)
    assert {"collector/policy_version", "world_model/version", "agent/world_model_version", "rollout/horizon"} <= metrics


def test_the_compiled_update_with_cuda_graphs_gives_the_eager_losses_on_a_gpu():
    torch.manual_seed(0)
    agent = SACAgent(critic_layer_norm=True)
    agent.build(EnvSpecs(observation_dim=3, action_spec=Bounded(-2, 2, shape=(1,))))
    agent.to("cuda")
    networks = Networks.of(agent.loss_module)
    batch = as_batch(random_transitions(256).to("cuda"))
    compiled = compile_losses(torch.device("cuda"))
    noise = torch.randn(2, 256, 1, device="cuda")

    eager = networks.losses(batch, noise[0], noise[1])
    for _ in range(3):  # CUDA graphs record on a later call than the first
        graphed = networks.losses(batch, noise[0], noise[1], compiled)
        got = [graphed.actor.item(), graphed.critic.item(), graphed.alpha_loss.item()]
        graphed.total.backward()

    torch.testing.assert_close(torch.tensor(got), torch.tensor([eager.actor.item(), eager.critic.item(), eager.alpha_loss.item()]), rtol=1e-4, atol=1e-5)


def test_mbpo_fits_with_the_compiled_update_on_a_gpu(store: Path):
    result = run_cli("fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, *ON_GPU, "--model.compile", "true", store=store)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train/critic_loss" in only_run(store).data.metrics


def test_the_compiled_update_with_cuda_graphs_steps_at_the_float32_floor_through_a_run(tmp_path: Path):
    # CUDA graphs replay recorded kernels on fixed addresses: a tensor the optimizer or the Polyak step
    # replaced, or an input not copied in, would show as gradients and steps far from float64's.
    csv = tmp_path / "audit.csv"
    result = audit(
        "--every", "10", "--csv", str(csv), "--",
        "fit", "--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, *ON_GPU, *store_args(tmp_path), "--model.compile", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert audited_at_the_floor(csv) == 20
