"""NMBRL command line. Example: ``python cli.py fit --config configs/mbpo.yaml``."""

from nmbrl.cli import run


def cli_main(args: list[str] | None = None) -> None:
    run(args)


if __name__ == "__main__":
    cli_main()
