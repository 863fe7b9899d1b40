"""The command line: LightningCLI over the SAC agent and the RL data module."""

from __future__ import annotations

import importlib
import logging
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal, Union

import torch
from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from mlflow import MlflowClient

from callbacks import (
    BranchedRollouts,
    CollectorProcess,
    Evaluation,
    PolicyModelLogging,
    RunLifecycle,
    WorldModelTraining,
    WorldModelTrainingProcess,
)

from nmbrl.agent import SACAgent
from nmbrl.checkpoints import AtomicCheckpointIO, check_same_env, check_same_run_kind, find_last_checkpoint, read_checkpoint_info
from nmbrl.concurrent.cores import available_cores
from nmbrl.data import RLDataModule, model_buffer_capacity
from nmbrl.data.scratch import remove_orphaned_scratch_folders
from nmbrl.denormals import flush_denormals
from nmbrl.envs import env_specs_of
from nmbrl.errors import ConfigError, TrainingDiverged
from nmbrl.interrupt import interrupt
from nmbrl.preflight import check_buffer_room, check_tracking_uri, check_writable_folder, rollout_bytes, transition_bytes
from nmbrl.rollouts import rollout_horizon
from nmbrl.tracking import SaveConfigToRun, sqlite_store_lock

TORCH_THREADS_HELP = (
    "Intra-op threads of torch, or 'auto' (the default): the idle cores (cores this process may use, less those "
    "busy at start), shared out between training processes, at most 2 each; concurrent mode's agent lends its "
    "threads to the world-model trainer while it retrains, where the cores cannot hold both. On the idle 2-core "
    "machine benchmarks/throughput.py projects the default job 20-25% faster with 2 threads than with 1; but "
    "whenever another job shares the cores, threads that wait on each other made SAC updates 3.5 times and "
    "world-model training 9 times slower than one thread. Pass 1 when you run several jobs side by side. The "
    "run's config.yaml records the count 'auto' took: a seed's trajectory depends on it."
)
FLUSH_DENORMAL_HELP = (
    "Flush denormal floats (below 1.2e-38) to zero in CPU maths (default true). Adam's moment estimates of dead "
    "ReLU units decay into them, and each operation on one costs about a hundred cycles: at 20k env steps of "
    "configs/mbpo.yaml a fifth of the agent's optimizer state was denormal and its Adam step took 6.7 times as "
    "long. false keeps IEEE arithmetic to the last bit, as runs before this option computed."
)
# 'auto' uses at most this many threads: the only counts measured (benchmarks/RESULTS.md), and the
# networks are small enough that more threads would mostly wait on each other.
AUTO_THREADS_CAP = 2

OPTIONAL_CALLBACKS = {
    "model_training": WorldModelTraining,
    "rollouts": BranchedRollouts,
    "evaluation": Evaluation,
    "collection": CollectorProcess,  # concurrent mode: the real env steps in its own process
}

# Callbacks that a Trainer flag set to false switches off; Lightning refuses the flag while the config lists one.
SWITCHED_OFF_BY = {"enable_progress_bar": ProgressBar, "enable_checkpointing": Checkpoint}


class NMBRLCLI(LightningCLI):
    """``fit`` trains the agent; the world model and its schedule come in as callbacks (see configs/).

    The MBPO callbacks are top-level config groups, so each setting has a command-line flag
    (``--rollouts.batch_size 1000``); a group left out (as in ``sac.yaml``) is not used.

    Before anything is built, an MLflow experiment left unnamed gets ``<algorithm>-<env>``
    (``default_experiment_name``), the run folder and the MLflow store are checked, and a
    ``--ckpt_path`` (a file, or ``last``: the newest ``last.ckpt`` of the config's experiment) is
    read: the run continues in the checkpoint's MLflow run and run folder, and a checkpoint of an
    environment with other observation or action sizes is refused. Every run gets
    ``RunLifecycle`` (RNG states, Ctrl+C) and atomic checkpoint writes. ``--trainer.enable_progress_bar
    false`` and ``--trainer.enable_checkpointing false`` leave out the progress bar and checkpoint
    callbacks the config lists; ``--trainer.limit_train_batches`` is refused (see ``check_trainer_flags``).

    ``--torch_threads`` sets torch's intra-op threads before anything is built, and
    ``--flush_denormal`` (on by default) flushes denormal floats to zero (``nmbrl.denormals``).
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

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``test``: the agent has no validation or prediction step for ``validate`` or ``predict``."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "test")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--torch_threads", type=Union[int, Literal["auto"]], default="auto", help=TORCH_THREADS_HELP)
        parser.add_argument("--flush_denormal", type=bool, default=True, help=FLUSH_DENORMAL_HELP)
        # `--seed_everything true` asks Lightning for a random seed, which it draws after parsing:
        # the env's seed is then set from it in before_instantiate_classes.
        parser.link_arguments("seed_everything", "data.seed", compute_fn=lambda seed: 0 if isinstance(seed, bool) else seed)
        for key, callback in OPTIONAL_CALLBACKS.items():
            parser.add_lightning_class_args(callback, key, subclass_mode=True, required=False)
        # Always there (``--policy_model.enabled false`` to opt out): the policy as the run's MLflow model.
        parser.add_lightning_class_args(PolicyModelLogging, "policy_model")

    def _parse_ckpt_path(self) -> None:
        # Runs right after parsing, before Lightning loads ``ckpt_path`` for its hyperparameters:
        # the place to check where the run writes and which checkpoint it continues.
        subcommand = self.config.get("subcommand")
        if subcommand == "test" and not self.config.test.get("ckpt_path"):
            raise ConfigError(
                "cli.py test needs --ckpt_path: 'last' (the newest last.ckpt of the config's experiment) or a checkpoint "
                "file. Without it the agent would be a new, untrained one."
            )
        if subcommand:
            check_run_targets(self.config[subcommand], resuming=subcommand == "fit")
        asked = self.config.fit.model.clone() if subcommand == "fit" and self.config.fit.get("ckpt_path") else None
        super()._parse_ckpt_path()  # the checkpoint's agent settings replace the config's
        if asked is not None:
            settle_resumed_agent_settings(asked, self.config.fit.model)

    def _set_seed(self) -> None:
        # Lightning's CLI documents `--seed_everything true` as a random seed, but Lightning 2.6's
        # seed_everything() without a seed warns and takes 0: draw the seed here.
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("seed_everything") is True:
            config.seed_everything = random_seed()
        super()._set_seed()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # The seed Lightning has set (drawn for `true`, see _set_seed); `false` seeds nothing, and the env a random seed.
        seed = config.seed_everything
        config.data.seed = random_seed() if isinstance(seed, bool) else seed
        if config.flush_denormal and not flush_denormals():  # before torch's worker threads start
            rank_zero_warn("flush_denormal: this CPU or torch's already running threads keep denormal floats; Adam may slow down as a run goes on.")
        threads = config.torch_threads
        if threads == "auto":
            threads = auto_torch_threads(trainer_processes(config.trainer.devices))
            rank_zero_info(f"torch_threads=auto: {threads} torch thread(s) per training process.")
            # The run's saved config and MLflow params record the count: a seed's trajectory depends on it.
            config.torch_threads = threads
        set_torch_threads(threads)
        check_trainer_flags(config.trainer)
        check_concurrent_roles(config)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Optional callback groups left out of the config come as None.
        callbacks = [c for c in callbacks if c is not None] + [RunLifecycle()]
        config["callbacks"] = without_switched_off_callbacks(config)
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        if self.subcommand == "fit":
            check_buffers_fit(self.datamodule, next((c for c in callbacks if isinstance(c, BranchedRollouts)), None), config)
        try:
            return super()._instantiate_trainer(config, callbacks)
        except (MisconfigurationException, ValueError) as error:
            # Lightning checks its flags as it builds the Trainer: a bad one is a bad setting, said in one line.
            raise ConfigError(f"trainer: {error}") from error


def check_buffers_fit(data: RLDataModule, rollouts: BranchedRollouts | None, trainer: dict[str, Any]) -> None:
    """ConfigError unless the real and model buffers, as large as this run makes them, fit the machine now.

    The budget bounds both: the real buffer holds at most the run's transitions, and the model
    buffer's capacity follows the rollout horizon of the run's last epoch. With no epoch limit
    (``max_epochs`` -1), the buffers' full sizes count. The longest rollout's working memory
    (``rollout_bytes``, for one chunk of start states) counts beside them.
    """
    specs = env_specs_of(data.env_name)
    if data.model_buffer_dir is not None and os.path.isdir(data.model_buffer_dir):
        # What the run's first rollout would do anyway: a killed run's scratch files count as free disk.
        remove_orphaned_scratch_folders(data.model_buffer_dir)
    per_transition = transition_bytes(specs.observation_dim, specs.action_dim)
    max_epochs = trainer.get("max_epochs")
    if max_epochs is None:
        max_epochs = -1 if (trainer.get("max_steps") or -1) != -1 else 1000  # Lightning's defaults
    real = data.buffer_size
    if max_epochs >= 0:
        real = min(real, data.transitions(data.random_steps + max_epochs * data.epoch_length))
    model = working = 0
    if rollouts is not None:
        epochs = range(max_epochs) if max_epochs >= 0 else (0, rollouts.schedule[1])  # horizons change between these
        horizon = max((rollout_horizon(epoch, rollouts.schedule) for epoch in epochs), default=0)
        model = model_buffer_capacity(horizon, rollouts.batch_size, data.epoch_length, rollouts.every, rollouts.retain_epochs)
        working = rollout_bytes(min(rollouts.batch_size, rollouts.chunk_size), horizon, specs.observation_dim, specs.action_dim)
    check_buffer_room(
        real * per_transition,
        model * per_transition,
        data.model_buffer_dir,
        trainer_processes(trainer.get("devices", "auto")),
        "Lower --rollouts.batch_size or --rollouts.retain_epochs, keep the imagined data on a disk with "
        "--data.model_buffer_dir, roll out in smaller chunks with --rollouts.chunk_size, or lower --data.buffer_size.",
        working,
    )


def without_switched_off_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """The config's callbacks, less the progress bar or checkpointing that a Trainer flag switches off."""
    listed = trainer_config.get("callbacks") or []
    listed = listed if isinstance(listed, list) else [listed]
    for flag, kind in SWITCHED_OFF_BY.items():
        off = [c for c in listed if isinstance(c, kind)]
        if trainer_config.get(flag) is False and off:
            rank_zero_info(f"trainer.{flag}=false: leaving out {', '.join(type(c).__name__ for c in off)}.")
            listed = [c for c in listed if not isinstance(c, kind)]
    return listed


SHORT_RUN = "--trainer.max_epochs 2 --data.random_steps 250 --data.epoch_length 250"
# Trainer flags that do not fit this loop: the one value allowed (Lightning's default), and why.
UNSUPPORTED_TRAINER_FLAGS = {
    "fast_dev_run": (
        False,
        "a batch here is one env step, so one batch would not be a run of every phase. For a quick run that "
        f"retrains, rolls out and evaluates, shorten the budget: {SHORT_RUN}.",
    ),
    "overfit_batches": (0.0, "a batch here is one env step, and repeating a few would stop the env steps. Leave it unset."),
    "gradient_clip_val": (None, "the SAC agent steps its own optimizer (manual optimization), which Lightning cannot clip. Leave it unset."),
    "accumulate_grad_batches": (1, "the SAC agent steps its own optimizer once per update (manual optimization). Leave it unset."),
}


def check_trainer_flags(trainer: Namespace) -> None:
    """ConfigError for Trainer flags that would break the env-step accounting of an epoch, the agent's
    own optimizer steps, or the networks' dtype."""
    for flag, (default, why) in UNSUPPORTED_TRAINER_FLAGS.items():
        value = trainer.get(flag)
        if value is not None and value != default:
            raise ConfigError(f"trainer.{flag}={value} is not supported: {why}")
    if (trainer.get("log_every_n_steps") or 0) < 0:
        raise ConfigError(f"trainer.log_every_n_steps={trainer.get('log_every_n_steps')} must be at least 0 (0: no per-step metrics).")
    precision = str(trainer.get("precision"))
    if (precision.endswith("-true") and precision != "32-true") or precision == "64":  # "64": Lightning's alias of 64-true
        raise ConfigError(
            f"trainer.precision={precision!r} is not supported: it casts the networks, but the environments, "
            "buffers and world model give float32 data. Use 32-true (the default) or a mixed precision (bf16-mixed)."
        )
    limit = trainer.get("limit_train_batches")
    if limit is not None and not (isinstance(limit, float) and limit == 1.0):
        raise ConfigError(
            f"trainer.limit_train_batches={limit} is not supported: a batch here is one env step, and the data module "
            "counts an epoch as data.epoch_length env steps, so cut epochs would throw the env-step budget and the "
            "schedules off. Leave it unset and shorten the epochs with --data.epoch_length instead."
        )


def check_concurrent_roles(config: Namespace) -> None:
    """ConfigError for a collector process without the world-model trainer process.

    Concurrent mode is the two together (``configs/mbpo_async.yaml``). A ``--collection.*`` flag on
    another config would otherwise add a collector process to it, and quietly start a mode nobody asked for.
    """
    collection, model_training = config.get("collection"), config.get("model_training")
    if collection is None:
        return
    trainer_class = class_of(model_training.class_path) if model_training is not None else None
    if trainer_class is None or not issubclass(trainer_class, WorldModelTrainingProcess):
        what = f"its model_training is {trainer_class.__name__}, in the main process" if trainer_class else "it has no model_training"
        raise ConfigError(
            f"collection ({collection.class_path}) is concurrent mode's collector process, but this config is not "
            f"concurrent mode: {what}. For concurrent mode use --config configs/mbpo_async.yaml (its --collection.* "
            "flags apply there); otherwise leave out the --collection.* flags."
        )


def default_experiment_name(config: Namespace) -> str:
    """``<algorithm>-<env>``: ``mbpo`` with a world model (``model_training`` set), else ``sac``; env lowercased."""
    algorithm = "mbpo" if config.get("model_training") is not None else "sac"
    return f"{algorithm}-{config.data.env.lower()}"


def random_seed() -> int:
    """A seed from the OS's entropy, not from the generators the run is about to seed."""
    return random.SystemRandom().randrange(2**31)


# Agent settings that a resumed fit takes from its config: they steer the updates, and no tensor
# of the checkpoint holds them. The others (network sizes, LayerNorm, the averaged policy, gamma,
# the target entropy) are the checkpoint's, as its weights and buffers are.
RESUME_TAKES_FROM_CONFIG = ("tau", "max_loss_ratio", "divergence_patience", "compile")


def settle_resumed_agent_settings(asked: Namespace, resumed: Namespace) -> None:
    """After Lightning put the checkpoint's agent settings in the config: give back those a resumed
    run takes from its config, and say which of the config's settings differ from what the run uses."""
    taken, kept = [], []
    for key in asked.keys():
        if "." in key or key == "optimizer" or asked[key] == resumed.get(key):
            continue  # the optimizer's settings are applied with its state (SACAgent.on_load_checkpoint)
        if key in RESUME_TAKES_FROM_CONFIG:
            taken.append(f"{key} {resumed[key]} -> {asked[key]}")
            resumed[key] = asked[key]
        else:
            kept.append(f"{key}={resumed[key]} (the config asks for {asked[key]})")
    if taken:
        rank_zero_info(f"agent settings from the config: {', '.join(taken)}.")
    if kept:
        rank_zero_info(
            f"agent settings kept from the checkpoint, as its networks and buffers hold them: {', '.join(kept)}. "
            "A new run without --ckpt_path takes the config's."
        )


def check_run_targets(config: Namespace, resuming: bool = False) -> None:
    """Name an unnamed MLflow experiment, check the run folder root and MLflow store, resolve ``ckpt_path`` (``resuming``: for a fit)."""
    check_writable_folder(config.trainer.default_root_dir or ".", "run folder root", "--trainer.default_root_dir")
    logger = mlflow_logger_args(config.trainer.logger)
    if logger is not None:
        if logger.get("experiment_name") is None:
            logger.experiment_name = default_experiment_name(config)
        check_tracking_uri(logger.tracking_uri)
    if config.get("ckpt_path"):
        continue_from_checkpoint(config, logger, resuming=resuming)


def mlflow_logger_args(logger: Any) -> Namespace | None:
    """The init args of the configured logger if it is an MLFlowLogger (the usual case), else None."""
    if not isinstance(logger, Namespace) or "class_path" not in logger:
        return None
    return logger.init_args if issubclass(class_of(logger.class_path), MLFlowLogger) else None


def class_of(class_path: str) -> type:
    """The class a config's ``class_path`` names."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def continue_from_checkpoint(config: Namespace, logger: Namespace | None, resuming: bool) -> None:
    """Resolve and check ``ckpt_path`` (for a resumed fit, or ``cli.py test``); point the logger at the checkpoint's MLflow run."""
    path = config.ckpt_path
    if path == "last":
        path = find_last_checkpoint(config.trainer.default_root_dir or ".", experiment_id(logger))
    info = read_checkpoint_info(path)
    specs = env_specs_of(config.data.env)
    check_same_env(info, config.data.env, specs.observation_dim, specs.action_dim, config.data.action_repeat)
    if resuming:
        model_training = config.get("model_training")
        trainer_key = class_of(model_training.class_path).__qualname__ if model_training is not None else None
        searched = logger.experiment_name if config.ckpt_path == "last" and logger is not None else None
        check_same_run_kind(info, trainer_key, picked_as_last=searched)
    config.ckpt_path = str(info.path)
    quiet_resume_notices()
    if logger is not None and info.run_id is not None:
        if info.tracking_uri is not None and info.tracking_uri != logger.tracking_uri:
            raise ConfigError(
                f"ckpt_path={str(info.path)!r} belongs to MLflow run {info.run_id} in {info.tracking_uri}, but the config "
                f"logs to {logger.tracking_uri}. Pass --trainer.logger.init_args.tracking_uri {info.tracking_uri}."
            )
        logger.run_id = info.run_id


def experiment_id(logger: Namespace | None) -> str | None:
    """The MLflow id of the configured experiment (run folders are named after it), if it exists."""
    if logger is None:
        return None
    with sqlite_store_lock(logger.tracking_uri):
        experiment = MlflowClient(logger.tracking_uri).get_experiment_by_name(logger.experiment_name)
    if experiment is None:
        raise ConfigError(
            f"ckpt_path='last': the experiment {logger.experiment_name!r} has no runs in {logger.tracking_uri}, so there "
            "is nothing to resume. Train first, or pass the path of a checkpoint file."
        )
    return experiment.experiment_id


# A command stopped by a signal exits with 128 + its number (130 for Ctrl+C, 143 for SIGTERM), as shells report it.
SIGNAL_EXIT_BASE = 128


# `cli.py fit` without --config trains the main job. Without any config LightningCLI would train a
# plain SAC agent for Lightning's default 1000 epochs, logging to ./lightning_logs and not to MLflow.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mbpo.yaml"


def with_a_config(args: list[str]) -> list[str]:
    """``args``, with a ``--config`` for a ``fit`` or ``test`` that names none.

    ``fit`` gets ``configs/mbpo.yaml``; ``test`` the ``config.yaml`` of the checkpoint's run folder,
    as the agent and env must match the checkpoint's (ConfigError where there is none to find).
    """
    if not args or args[0] not in ("fit", "test"):
        return args
    if any(arg in ("--config", "-c", "-h", "--help") or arg.startswith("--config=") for arg in args[1:]):
        return args
    if args[0] == "fit":
        if not DEFAULT_CONFIG.is_file():  # installed without the repository's configs/
            return args
        shown = os.path.relpath(DEFAULT_CONFIG)
        say(f"No --config given: training with {shown} (MBPO on cartpole-swingup; configs/ holds the others).")
        return [args[0], "--config", str(DEFAULT_CONFIG), *args[1:]]
    checkpoint = flag_value(args, "--ckpt_path")
    config = Path(checkpoint).parent.parent / "config.yaml" if checkpoint not in (None, "last") else None
    if config is None or not config.is_file():
        raise ConfigError(
            "cli.py test needs --config: the config.yaml of the run that wrote the checkpoint "
            "(runs/<experiment id>/<run id>/config.yaml), so that the agent and env match it."
        )
    say(f"No --config given: testing with the run's {config}.")
    return [args[0], "--config", str(config), *args[1:]]


@rank_zero_only
def say(message: str) -> None:
    """A line on stderr, from rank zero: stdout may be the config that ``--print_config`` writes."""
    print(message, file=sys.stderr, flush=True)


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag value`` or ``--flag=value``), or None."""
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def run(args: list[str] | None = None, **cli_options) -> NMBRLCLI:
    """Run the CLI; bad settings end with one line on stderr and exit status 2, divergence with status 3,
    a stop by Ctrl+C or SIGTERM (after its checkpoint) with status 130 or 143.

    ``cli_options`` go to ``LightningCLI``: ``trainer_defaults={"callbacks": [...]}`` adds callbacks
    to every run's, beside the config's (``benchmarks/gradient_audit.py`` adds its audit so).
    """
    interrupt.stopped_by = None  # this run's, not an earlier one's in the same process
    quiet_upstream_notices()
    try:
        if args is None:  # the command line: completed in place (LightningCLI warns when given both)
            sys.argv[1:] = with_a_config(sys.argv[1:])
            return NMBRLCLI(**cli_options)
        return NMBRLCLI(args=with_a_config(args), **cli_options)
    except SystemExit as exit_:
        if exit_.code == 1 and interrupt.stopped_by is not None:  # Lightning's sys.exit(1) after a KeyboardInterrupt
            raise SystemExit(SIGNAL_EXIT_BASE + interrupt.stopped_by) from None
        raise
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(3) from None
    except RuntimeError as error:
        if not str(error).startswith("Error(s) in loading state_dict"):
            raise
        detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        print(
            f"error: the checkpoint does not fit the networks this config builds ({detail} ...). Use the config the "
            "checkpoint was trained with: config.yaml in its run folder (runs/<experiment id>/<run id>/).",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    except Exception as error:
        config_error = find_config_error(error)
        if config_error is None:
            raise
        print(f"error: {config_error}", file=sys.stderr)
        raise SystemExit(2) from None


class DropLightningTips(logging.Filter):
    """Leaves out Lightning's "💡 Tip" lines: on every run, an advertisement for its cloud logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_upstream_notices() -> None:
    """Keep the terminal to what concerns the run: no notices a user can do nothing about."""
    lightning_info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropLightningTips) for f in lightning_info.filters):
        lightning_info.addFilter(DropLightningTips())
    # Lightning 2.6 calls a pytree API that torch 2.13 deprecates, once per run, with its source line.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # DDP, on every rank: the critics' output weights (2 x 1 x 256) get gradients whose stride differs
    # from the bucket's only along the size-1 dimension. The reducer copies those 512 numbers into
    # its bucket, as it does for every gradient unless gradient_as_bucket_view is set.
    warnings.filterwarnings("ignore", message=r"Grad strides do not match bucket view strides")
    # TorchRL reports each buffer's first allocation ("Initialized LazyTensorStorage ...") at INFO,
    # in colour, straight across the progress bar.
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    # MLflow announces, with a timestamp, that it creates and migrates a new sqlite store's tables.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def quiet_resume_notices() -> None:
    """Lightning's warnings on every resume that are not the user's concern: the run writes into its
    own checkpoint folder again, and a run once given ``--trainer.max_time`` has its Timer's state
    in the checkpoint, resumed or not."""
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, .* the following callbacks: \['Timer'\]")


def set_torch_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads; ConfigError unless it is at least 1."""
    if threads < 1:
        raise ConfigError(f"torch_threads={threads} must be at least 1 (the number of intra-op threads torch uses).")
    torch.set_num_threads(threads)


def auto_torch_threads(processes: int = 1) -> int:
    """Threads for each of ``processes`` training processes: the idle cores shared out, from 1 to ``AUTO_THREADS_CAP``.

    Idle cores are the cores this process may run on, less those busy right now (``busy_cores``).
    Concurrent mode's roles are not counted: they share the agent's cores (``nmbrl.concurrent.cores``).
    """
    idle = available_cores() - round(busy_cores())
    return max(1, min(AUTO_THREADS_CAP, idle // max(processes, 1)))


def busy_cores(window_s: float = 0.3) -> float:
    """Cores the machine keeps busy now: its non-idle CPU time over ``window_s`` (Linux ``/proc/stat``).

    Not the load average, which still counts work that just ended (``bash setup.sh`` before the
    README's first command). Elsewhere the 1-minute load average stands in.
    """
    try:
        before = cpu_times()
        time.sleep(window_s)
        after = cpu_times()
    except OSError:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    spent = [b - a for a, b in zip(before, after)]
    total = sum(spent)
    idle = spent[3] + spent[4]  # idle, iowait
    return (os.cpu_count() or 1) * (total - idle) / total if total else 0.0


def cpu_times() -> list[int]:
    """The machine's CPU time by state (user, nice, system, idle, iowait, irq, softirq, steal), in ticks."""
    with open("/proc/stat") as stat:
        return [int(ticks) for ticks in stat.readline().split()[1:9]]


def trainer_processes(devices: Any) -> int:
    """Training processes on this machine for ``trainer.devices`` (one per device; 1 for "auto")."""
    if isinstance(devices, (list, tuple)):
        return max(len(devices), 1)
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    return devices if isinstance(devices, int) and devices > 1 else 1


def find_config_error(error: BaseException | None) -> ConfigError | None:
    """The ConfigError behind ``error``: jsonargparse wraps errors raised by nested classes."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
