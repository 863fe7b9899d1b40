"""Real environments: name parsing, construction and termination rules."""

import os

# Headless MuJoCo rendering: OSMesa works on any machine without a display or GPU.
# Users with a GPU can export MUJOCO_GL=egl before starting.
os.environ.setdefault("MUJOCO_GL", "osmesa")

from nmbrl.envs.make import EnvSpecs, check_env_name, env_specs, env_specs_of, make_env  # noqa: E402

__all__ = ["EnvSpecs", "check_env_name", "env_specs", "env_specs_of", "make_env"]
