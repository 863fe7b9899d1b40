"""Lightning callbacks that orchestrate MBPO between agent updates."""

from callbacks.concurrent import CollectorProcess, WorldModelTrainingProcess
from callbacks.env_steps import EnvStepMonitor
from callbacks.evaluation import Evaluation
from callbacks.model_training import WorldModelTraining
from callbacks.rollouts import BranchedRollouts
from callbacks.run_lifecycle import RunLifecycle

__all__ = [
    "BranchedRollouts",
    "CollectorProcess",
    "EnvStepMonitor",
    "Evaluation",
    "RunLifecycle",
    "WorldModelTraining",
    "WorldModelTrainingProcess",
]
