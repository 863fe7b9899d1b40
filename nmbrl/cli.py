"""The command line: LightningCLI over the SAC agent and the RL data module."""

from __future__ import annotations

import sys

from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks import BranchedRollouts, CollectorProcess, Evaluation, WorldModelTraining

from nmbrl.agent import SACAgent
from nmbrl.data import RLDataModule
from nmbrl.errors import ConfigError
from nmbrl.tracking import SaveConfigToRun

OPTIONAL_CALLBACKS = {
    "model_training": WorldModelTraining,
    "rollouts": BranchedRollouts,
    "evaluation": Evaluation,
    "collection": CollectorProcess,  # concurrent mode: the real env steps in its own process
}


class NMBRLCLI(LightningCLI):
    """``fit`` trains the agent; the world model and its schedule come in as callbacks (see configs/).

    The MBPO callbacks are top-level config groups, so each setting has a command-line flag
    (``--rollouts.batch_size 1000``); a group left out (as in ``sac.yaml``) is not used.
    """

    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        super().__init__(
            SACAgent,
            RLDataModule,
            save_config_callback=SaveConfigToRun,
            auto_configure_optimizers=False,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("seed_everything", "data.seed")
        for key, callback in OPTIONAL_CALLBACKS.items():
            parser.add_lightning_class_args(callback, key, subclass_mode=True, required=False)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Optional callback groups left out of the config come as None.
        return super()._instantiate_trainer(config, [c for c in callbacks if c is not None])


def run(args: list[str] | None = None) -> NMBRLCLI:
    """Run the CLI; bad settings end with one line on stderr and exit status 2."""
    try:
        return NMBRLCLI(args=args)
    except Exception as error:
        config_error = find_config_error(error)
        if config_error is None:
            raise
        print(f"error: {config_error}", file=sys.stderr)
        raise SystemExit(2) from None


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``error``: jsonargparse wraps errors raised by nested classes."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
