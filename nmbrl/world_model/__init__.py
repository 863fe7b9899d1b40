"""The learned dynamics: a vectorised probabilistic ensemble and its TorchRL environment."""

from nmbrl.world_model.ensemble import EnsembleLinear, GaussianEnsemble
from nmbrl.world_model.imagined_env import ImaginedEnv
from nmbrl.world_model.module import EnsembleWorldModel
from nmbrl.world_model.normalizer import Normalizer

__all__ = ["EnsembleLinear", "EnsembleWorldModel", "GaussianEnsemble", "ImaginedEnv", "Normalizer"]
