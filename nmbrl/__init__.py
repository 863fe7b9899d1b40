"""NMBRL: model-based reinforcement learning (MBPO) on Lightning, TorchRL and MLflow.

Outside the CLI, load what a run trained (a checkpoint file, a run folder or an MLflow run id)::

    from nmbrl import load_agent
    agent = load_agent("runs/1/<run id>")
    action = agent.act(observation)
"""

__version__ = "0.1.0"

from nmbrl.agent.trained import TrainedAgent  # noqa: E402
from nmbrl.errors import ConfigError  # noqa: E402
from nmbrl.loading import load_agent, load_imagined_env, load_world_model  # noqa: E402

__all__ = ["ConfigError", "TrainedAgent", "load_agent", "load_imagined_env", "load_world_model"]
