"""Trainer flags for batch jobs, and the MLflow experiment a run is filed under."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from e2e.cli_runner import TINY, TINY_MBPO, only_run, run_cli, store_args
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, ProgressBar, TQDMProgressBar

from callbacks.run_lifecycle import reopen_cut_epoch
from nmbrl.cli import NMBRLCLI
from nmbrl.cli import run as cli_run
from nmbrl.tracking import EnvStepMLFlowLogger

ROOT = Path(__file__).resolve().parents[1]


class BuiltCLI(NMBRLCLI):
    """``cli.py fit`` up to the built Trainer, without fitting (``run=False`` would skip the ``fit`` checks)."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def build_fit(store: Path, config: str, *args: str) -> BuiltCLI:
    return BuiltCLI(args=["fit", "--config", str(ROOT / "configs" / config), *store_args(store), "--torch_threads", "1", *args])


def experiment_name(cli: BuiltCLI) -> str:
    """The name the logger files the run under, and the one the saved config.yaml records."""
    recorded = cli.config.fit.trainer.logger.init_args.experiment_name
    assert cli.trainer.logger._experiment_name == recorded
    return recorded


@pytest.mark.parametrize(
    ("config", "name"),
    [("mbpo.yaml", "mbpo-cartpole-swingup"), ("mbpo_async.yaml", "mbpo-cartpole-swingup"), ("sac.yaml", "sac-cartpole-swingup")],
)
def test_the_shipped_configs_keep_their_experiment_names(store: Path, config: str, name: str) -> None:
    # The names they hard-coded before, so --ckpt_path last still finds the runs they made.
    assert experiment_name(build_fit(store, config)) == name


def test_the_experiment_name_follows_the_env_trained(store: Path) -> None:
    cli = build_fit(store, "mbpo.yaml", "--data.env", "InvertedPendulum-v5")

    assert experiment_name(cli) == "mbpo-invertedpendulum-v5"


def test_an_explicit_experiment_name_wins(store: Path) -> None:
    cli = build_fit(store, "sac.yaml", "--data.env", "Hopper-v5", "--trainer.logger.init_args.experiment_name", "mine")

    assert experiment_name(cli) == "mine"


def test_a_logger_built_without_a_name_still_gets_one(tmp_path: Path) -> None:
    logger = EnvStepMLFlowLogger(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    assert logger._experiment_name == "nmbrl"


@pytest.mark.parametrize(
    ("flag", "left_out", "kept"),
    [("enable_progress_bar", ProgressBar, ModelCheckpoint), ("enable_checkpointing", Checkpoint, TQDMProgressBar)],
)
def test_a_switched_off_flag_leaves_out_the_callbacks_the_config_lists(store: Path, flag: str, left_out: type, kept: type) -> None:
    listed = build_fit(store, "mbpo.yaml").trainer.callbacks
    assert any(isinstance(c, left_out) for c in listed), "the config lists one to leave out"

    callbacks = build_fit(store, "mbpo.yaml", f"--trainer.{flag}", "false").trainer.callbacks

    assert not any(isinstance(c, left_out) for c in callbacks)
    assert any(isinstance(c, kept) for c in callbacks)


@pytest.mark.parametrize("limit", ["30", "0.5"])
def test_limit_train_batches_is_refused_with_one_error_line(store: Path, capsys, limit: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["fit", "--config", "configs/sac.yaml", *TINY, "--trainer.limit_train_batches", limit, *store_args(store)])

    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "limit_train_batches" in errors[0] and "--data.epoch_length" in errors[0], errors
    assert not (store / "runs").exists()


@pytest.mark.parametrize(("config", "what"), [("mbpo.yaml", "WorldModelTraining, in the main process"), ("sac.yaml", "no model_training")])
def test_a_collection_flag_outside_concurrent_mode_is_refused_before_anything_is_built(store: Path, capsys, config: str, what: str) -> None:
    # Without the check, --collection.max_lead added a collector process to mbpo.yaml: a mode nobody asked for.
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["fit", "--config", f"configs/{config}", *TINY, "--collection.max_lead", "10", *store_args(store)])

    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and what in errors[0] and "configs/mbpo_async.yaml" in errors[0], errors
    assert not (store / "runs").exists()


def test_collection_flags_on_the_concurrent_config_are_taken(store: Path) -> None:
    cli = build_fit(store, "mbpo_async.yaml", "--collection.max_lead", "10")

    assert [c.max_lead for c in cli.trainer.callbacks if type(c).__name__ == "CollectorProcess"] == [10]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        # Before: a traceback once fit started (clipping, accumulation), a pickling error writing the
        # first checkpoint (fast_dev_run), or an epoch of one env step (overfit_batches).
        ("gradient_clip_val", "1.0", "manual optimization"),
        ("accumulate_grad_batches", "2", "manual optimization"),
        ("overfit_batches", "1", "repeating a few would stop the env steps"),
        ("fast_dev_run", "true", "--trainer.max_epochs 2 --data.random_steps 250 --data.epoch_length 250"),
    ],
)
def test_trainer_flags_that_do_not_fit_the_loop_are_refused_with_one_error_line(store: Path, capsys, flag, value, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["fit", "--config", "configs/sac.yaml", *TINY, f"--trainer.{flag}", value, *store_args(store)])

    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"trainer.{flag}=" in errors[0] and message in errors[0], errors
    assert not (store / "runs").exists()


@pytest.mark.parametrize(("flag", "value"), [("accumulate_grad_batches", "1"), ("overfit_batches", "0"), ("fast_dev_run", "false")])
def test_those_flags_at_their_defaults_are_accepted(store: Path, flag: str, value: str) -> None:
    assert build_fit(store, "sac.yaml", f"--trainer.{flag}", value).trainer is not None


@pytest.mark.parametrize("precision", ["64", "64-true", "16-true"])
def test_a_precision_that_casts_the_networks_is_refused_with_one_error_line(store: Path, capsys, precision: str) -> None:
    # Before: a traceback at the first env step ("mat1 and mat2 must have the same dtype").
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["fit", "--config", "configs/sac.yaml", *TINY, "--trainer.precision", precision, *store_args(store)])

    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"trainer.precision={precision!r} is not supported" in errors[0], errors


@pytest.mark.parametrize("precision", ["32-true", "32", "bf16-mixed"])
def test_float32_and_mixed_precisions_are_accepted(store: Path, precision: str) -> None:
    assert build_fit(store, "sac.yaml", "--trainer.precision", precision).trainer.precision in (precision, "32-true")


def test_limit_train_batches_of_a_whole_epoch_is_accepted(store: Path) -> None:
    cli = build_fit(store, "sac.yaml", "--trainer.limit_train_batches", "1.0")

    assert cli.trainer.limit_train_batches == 1.0


def test_a_fit_without_progress_bar_runs_to_the_end_in_the_env_named_experiment(store: Path) -> None:
    args = ["--config", "configs/mbpo.yaml", *TINY, *TINY_MBPO, "--data.env", "InvertedPendulum-v5"]
    result = run_cli("fit", *args, "--trainer.enable_progress_bar", "false", store=store, timeout=120)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "leaving out EnvStepProgressBar" in result.stderr + result.stdout
    run = only_run(store)
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    assert client.get_experiment(run.info.experiment_id).name == "mbpo-invertedpendulum-v5"
    saved = yaml.safe_load((store / "runs" / run.info.experiment_id / run.info.run_id / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["experiment_name"] == "mbpo-invertedpendulum-v5"


def test_max_steps_stops_after_the_env_step_that_reaches_it_without_checkpoints(store: Path) -> None:
    # In-process, to read the trainer. 4 updates per env step: 150 updates end within the 38th env step.
    flags = ["--trainer.max_steps", "150", "--data.updates_per_step", "4", "--trainer.enable_checkpointing", "false"]
    cli = cli_run(["fit", "--config", "configs/sac.yaml", *TINY, *flags, "--torch_threads", "1", *store_args(store)])

    assert cli.trainer.global_step == 152
    assert cli.datamodule.env_steps == 200 + 38
    assert cli.trainer.checkpoint_callback is None
    assert not list(store.glob("runs/**/*.ckpt"))
    assert only_run(store).info.status == "FINISHED"


def test_a_run_cut_by_max_steps_resumes_inside_the_cut_epoch_and_reaches_its_budget(store: Path) -> None:
    # 1 update per env step: 250 updates end at env step 450, half way through epoch 2 (400 to 500).
    fit = ["fit", "--config", "configs/sac.yaml", *TINY, "--trainer.max_epochs", "3", "--torch_threads", "1", *store_args(store)]
    cut = cli_run([*fit, "--trainer.max_steps", "250"])
    assert (cut.datamodule.env_steps, cut.trainer.current_epoch) == (450, 3)  # Lightning counts the cut epoch as done

    # Before: the resumed run began at epoch 3, which max_epochs=3 does not run, and stopped at once at 450.
    resumed = cli_run([*fit, "--ckpt_path", "last"])
    assert resumed.datamodule.env_steps == 200 + 3 * 100  # random_steps + max_epochs * epoch_length
    assert resumed.trainer.global_step == 300
    run = only_run(store)
    assert run.info.status == "FINISHED" and run.data.metrics["env_steps"] == 500


@pytest.mark.parametrize(
    ("progress", "last_batch", "reopened"),
    [
        ({"ready": 3, "started": 3, "processed": 3, "completed": 2}, False, True),  # epoch 2 cut short
        ({"ready": 3, "started": 3, "processed": 3, "completed": 2}, True, False),  # epoch 2 whole
        ({"ready": 3, "started": 3, "processed": 2, "completed": 2}, False, False),  # from inside epoch 2 (Ctrl+C)
        ({"ready": 3, "started": 3, "processed": 3, "completed": 3}, True, False),  # after the epoch ended
    ],
)
def test_only_a_checkpoint_of_an_epoch_cut_short_is_reopened(progress, last_batch, reopened) -> None:
    fit_loop = {"epoch_progress": {"total": dict(progress), "current": dict(progress)}, "epoch_loop.batch_progress": {"is_last_batch": last_batch}}
    checkpoint = {"loops": {"fit_loop": fit_loop}}
    assert reopen_cut_epoch(checkpoint) is reopened
    expected = progress["processed"] - reopened
    assert [fit_loop["epoch_progress"][k]["processed"] for k in ("total", "current")] == [expected] * 2


def test_a_killed_runs_scratch_files_are_cleared_before_the_disk_check(store: Path, tmp_path: Path) -> None:
    # They would count as used disk against the model buffer of the run that resumes it.
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / "scratch" / f"model_buffer_{socket.gethostname()}_pid{int(finished.stdout)}_rank0_abc"
    orphan.mkdir(parents=True)
    (orphan / "observation.memmap").write_bytes(b"0" * 1000)

    build_fit(store, "mbpo.yaml", "--data.model_buffer_dir", str(tmp_path / "scratch"))

    assert not orphan.exists() and (tmp_path / "scratch").exists()


def test_log_every_n_steps_0_logs_no_per_step_metrics_as_lightning_reads_it(store: Path) -> None:
    # Before: ZeroDivisionError at the first update (the agent's own logging took a modulo by it).
    cli_run(["fit", "--config", "configs/sac.yaml", *TINY, "--trainer.log_every_n_steps", "0", "--torch_threads", "1", *store_args(store)])
    metrics = only_run(store).data.metrics
    assert "train/critic_loss" not in metrics and "eval/return_mean" in metrics


def test_a_negative_log_every_n_steps_is_refused(store: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_run(["fit", "--config", "configs/sac.yaml", *TINY, "--trainer.log_every_n_steps", "-1", *store_args(store)])
    assert exit_info.value.code == 2
    assert "error: trainer.log_every_n_steps=-1 must be at least 0" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["true", "false", "7"])
def test_any_seed_setting_lightning_takes_seeds_the_env(store: Path, seed: str) -> None:
    # Before, `--seed_everything true` (Lightning's random seed) failed to parse: the env's seed is linked to it.
    cli = build_fit(store, "sac.yaml", "--seed_everything", seed)

    if seed == "false":
        assert cli.config.fit.seed_everything is False and isinstance(cli.datamodule.seed, int)
    else:
        chosen = cli.config.fit.seed_everything  # the seed Lightning drew for `true`, recorded in the run's config
        assert isinstance(chosen, int) and not isinstance(chosen, bool) and cli.datamodule.seed == chosen
        assert seed == "true" or chosen == 7
    if seed == "true":  # a random seed, not Lightning 2.6's fallback of 0: two runs draw two
        assert build_fit(store, "sac.yaml", "--seed_everything", seed).config.fit.seed_everything != chosen
