"""How ``make_env`` turns a dm_control task's observation dict into one vector (TorchRL's ``CatTensors``: keys sorted)."""

from __future__ import annotations

import torch
from torchrl.envs import DMControlEnv

from nmbrl.envs import env_specs_of, make_env


def test_dm_control_matrix_observations_are_flattened_into_the_vector_in_sorted_key_order() -> None:
    # manipulator's arm_pos is 8 x 2; before, concatenating it with the vectors failed at the first reset.
    env = make_env("manipulator-bring_ball", seed=0)
    raw_env = DMControlEnv("manipulator", "bring_ball")
    raw_env.set_seed(0)
    raw = raw_env.reset()

    keys = sorted(raw_env.observation_spec.keys())
    assert raw["arm_pos"].shape == (8, 2)
    expected = torch.cat([raw[key].flatten().float() for key in keys])
    assert expected.shape == (44,) and torch.equal(env.reset()["observation"], expected)
    assert env_specs_of("manipulator-bring_ball").observation_dim == 44
    assert env.rollout(3)["next", "observation"].shape == (3, 44)
    batch = make_env("manipulator-bring_ball", seed=0, num_envs=2)  # the batch dimension is not flattened
    assert batch.rollout(3)["next", "observation"].shape == (2, 3, 44)
    for closing in (env, raw_env, batch):
        closing.close()
