"""The command line: LightningCLI over the SAC agent and the RL data module."""

from __future__ import annotations

import sys
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from callbacks import BranchedRollouts, Evaluation, WorldModelTraining

from nmbrl.agent import SACAgent
from nmbrl.data import RLDataModule
from nmbrl.errors import ConfigError
from nmbrl.tracking import SaveConfigToRun

TORCH_THREADS_HELP = (
    "Intra-op threads of torch. The networks are small, and whenever another job shares the cores, threads "
    "that wait on each other made SAC updates 3.5 times and world-model training 9 times slower than one "
    "thread. On a machine of its own, compare with benchmarks/throughput.py --threads 1 and --threads 2."
)

OPTIONAL_CALLBACKS = {"model_training": WorldModelTraining, "rollouts": BranchedRollouts, "evaluation": Evaluation}


class NMBRLCLI(LightningCLI):
    """``fit`` trains the agent; the world model and its schedule come in as callbacks (see configs/).

    The MBPO callbacks are top-level config groups, so each setting has a command-line flag
    (``--rollouts.batch_size 1000``); a group left out (as in ``sac.yaml``) is not used.
    ``--torch_threads`` sets torch's intra-op threads before anything is built.
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
        parser.add_argument("--torch_threads", type=int, default=1, help=TORCH_THREADS_HELP)
        parser.link_arguments("seed_everything", "data.seed")
        for key, callback in OPTIONAL_CALLBACKS.items():
            parser.add_lightning_class_args(callback, key, subclass_mode=True, required=False)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        set_torch_threads(config.torch_threads)

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


def set_torch_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads; ConfigError unless it is at least 1."""
    if threads < 1:
        raise ConfigError(f"torch_threads={threads} must be at least 1 (the number of intra-op threads torch uses).")
    torch.set_num_threads(threads)


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``error``: jsonargparse wraps errors raised by nested classes."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
