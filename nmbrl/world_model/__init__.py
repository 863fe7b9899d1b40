"""The learned dynamics: a vectorised probabilistic ensemble, its TorchRL environment and its loading from checkpoints."""

from nmbrl.world_model.ensemble import EnsembleLinear, GaussianEnsemble
from nmbrl.world_model.imagined_env import ImaginedEnv, StartStates
from nmbrl.world_model.loading import imagined_env_from_checkpoint, world_model_from_checkpoint
from nmbrl.world_model.module import EnsembleWorldModel
from nmbrl.world_model.normalizer import Normalizer

__all__ = [
    "EnsembleLinear",
    "EnsembleWorldModel",
    "GaussianEnsemble",
    "ImaginedEnv",
    "Normalizer",
    "StartStates",
    "imagined_env_from_checkpoint",
    "world_model_from_checkpoint",
]
