"""Lightning callbacks that orchestrate MBPO between agent updates."""

from callbacks.concurrent import CollectorProcess, WorldModelTrainingProcess
from callbacks.env_steps import EnvStepMonitor, EnvStepProgressBar
from callbacks.evaluation import Evaluation
from callbacks.model_training import WorldModelTraining
from callbacks.policy_model import PolicyModelLogging
from callbacks.rollouts import BranchedRollouts
from callbacks.run_lifecycle import RunLifecycle

__all__ = [
    "BranchedRollouts",
    "CollectorProcess",
    "EnvStepMonitor",
    "EnvStepProgressBar",
    "Evaluation",
    "PolicyModelLogging",
    "RunLifecycle",
    "WorldModelTraining",
    "WorldModelTrainingProcess",
]
