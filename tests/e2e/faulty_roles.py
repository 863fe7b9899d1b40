"""A world-model trainer that fails on its second retraining: the error injected by test_concurrent.py.

Used through the CLI's class_path, like any user subclass; the role is pickled into its process,
which imports this module from the same path.
"""

from __future__ import annotations

from callbacks import WorldModelTrainingProcess
from nmbrl.concurrent.world_model_role import WorldModelRole


class FailingWorldModelRole(WorldModelRole):
    def retrain(self, env_steps, should_stop) -> None:
        if self.weights.version.value >= 1:
            raise RuntimeError("injected world-model failure")
        super().retrain(env_steps, should_stop)


class FailingWorldModelTrainingProcess(WorldModelTrainingProcess):
    def make_role(self, trainer, shared) -> FailingWorldModelRole:
        return FailingWorldModelRole(**vars(super().make_role(trainer, shared)))
