"""The command line: LightningCLI over the SAC agent and the RL data module."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from nmbrl.agent import SACAgent
from nmbrl.data import RLDataModule
from nmbrl.errors import ConfigError
from nmbrl.tracking import SaveConfigToRun


class NMBRLCLI(LightningCLI):
    """``fit`` trains the agent; the world model and its schedule come in as callbacks (see configs/)."""

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


def run(args: list[str] | None = None) -> NMBRLCLI:
    """Run the CLI; bad settings end with one line on stderr and exit status 2."""
    try:
        return NMBRLCLI(args=args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
