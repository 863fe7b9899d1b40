"""NMBRL: model-based reinforcement learning (MBPO) on Lightning, TorchRL and MLflow."""

__version__ = "0.1.0"
