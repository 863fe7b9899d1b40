"""The command line's own settings (the classes' settings are tested with the classes)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nmbrl import cli
from nmbrl.cli import AUTO_THREADS_CAP, NMBRLCLI, auto_torch_threads, trainer_processes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def build_cli(tmp_path: Path, *args: str) -> NMBRLCLI:
    """The CLI's objects for the default config, without fitting and without a logger."""
    config = ["--config", str(ROOT / "configs/mbpo.yaml"), "--trainer.logger", "false"]
    return NMBRLCLI(args=[*config, "--trainer.default_root_dir", str(tmp_path), *args], run=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_threads_sets_torch_intra_op_threads(tmp_path, restore_torch_threads, threads):
    torch.set_num_threads(3)

    build_cli(tmp_path, "--torch_threads", str(threads))

    assert torch.get_num_threads() == threads


@pytest.fixture
def machine(monkeypatch):
    """Pretend to run on ``cores`` cores of which ``load`` are busy."""

    def pretend(cores: int, load: float) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(cli, "busy_cores", lambda: load)

    return pretend


@pytest.mark.parametrize(
    ("cores", "load", "threads"),
    [(2, 0.1, 2), (2, 0.6, 1), (2, 1.3, 1), (2, 5.0, 1), (16, 0.0, AUTO_THREADS_CAP)],
)
def test_auto_threads_use_the_idle_cores_up_to_the_cap(machine, cores, load, threads):
    machine(cores, load)

    assert auto_torch_threads() == threads


def test_auto_threads_share_the_idle_cores_between_processes(machine):
    machine(4, 0.0)

    assert auto_torch_threads(processes=4) == 1
    assert auto_torch_threads(processes=2) == 2
    assert auto_torch_threads(processes=3) == 1
    assert auto_torch_threads(processes=1) == AUTO_THREADS_CAP


def test_auto_threads_give_the_concurrent_agent_the_cores_its_roles_borrow(tmp_path, machine, restore_torch_threads):
    # The roles share the agent's cores (nmbrl.concurrent.cores) rather than taking threads from it.
    machine(2, 0.0)
    concurrent = ["--config", str(ROOT / "configs/mbpo_async.yaml"), "--trainer.logger", "false"]
    for args in ([], ["--collection.init_args.threads", "2"]):
        torch.set_num_threads(1)
        NMBRLCLI(args=[*concurrent, "--trainer.default_root_dir", str(tmp_path), *args], run=False)
        assert torch.get_num_threads() == 2
    build_cli(tmp_path)
    assert torch.get_num_threads() == 2, "the same as the synchronous mode's"


def test_busy_cores_is_the_non_idle_share_of_the_cpu_time(monkeypatch):
    # user nice system idle iowait irq softirq steal, in ticks: 300 of 400 ticks idle or iowait
    snapshots = iter([[0] * 8, [60, 0, 30, 250, 50, 5, 5, 0]])
    monkeypatch.setattr(cli, "cpu_times", lambda: next(snapshots))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)

    assert cli.busy_cores(window_s=0) == pytest.approx(1.0)


def test_busy_cores_falls_back_to_the_load_average_without_proc_stat(monkeypatch):
    def missing():
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr(cli, "cpu_times", missing)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.7, 1.0, 0.5))

    assert cli.busy_cores(window_s=0) == 1.7


def test_busy_cores_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert cli.busy_cores(window_s=0.5) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize(("devices", "processes"), [("auto", 1), (1, 1), (2, 2), ("2", 2), ([0, 1, 2], 3), (-1, 1)])
def test_trainer_processes_counts_one_per_device(devices, processes):
    assert trainer_processes(devices) == processes


@pytest.mark.parametrize(("load", "threads"), [(0.0, 2), (1.0, 1)])
def test_torch_threads_default_to_the_idle_cores_and_the_config_records_the_count(tmp_path, restore_torch_threads, machine, load, threads):
    machine(2, load)
    torch.set_num_threads(3)

    built = build_cli(tmp_path)

    assert torch.get_num_threads() == threads
    # What the run's config.yaml and MLflow params say: its seed's trajectory depends on the count.
    assert built.config["torch_threads"] == threads


def test_only_a_signal_stop_turns_lightnings_exit_status_1_into_the_shells_status_for_that_signal(monkeypatch):
    import signal

    from nmbrl.interrupt import interrupt

    def stopped_by(signum):
        def fake(args):
            interrupt.stopped_by = signum  # as RunLifecycle.on_exception marks it, before Lightning's sys.exit(1)
            raise SystemExit(1)

        return fake

    def exited_otherwise(args):
        raise SystemExit(1)

    # The last run does not inherit the stop of the one before it.
    for fake, status in [(stopped_by(signal.SIGINT), 130), (stopped_by(signal.SIGTERM), 143), (exited_otherwise, 1)]:
        monkeypatch.setattr(cli, "NMBRLCLI", fake)
        with pytest.raises(SystemExit) as exit_info:
            cli.run([])
        assert exit_info.value.code == status


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_only_fit_and_test_are_offered(subcommand, capsys):
    # The agent has no validation or prediction step: Lightning would fail with a traceback after loading everything.
    with pytest.raises(SystemExit) as exit_info:
        cli.run([subcommand, "--config", str(ROOT / "configs/mbpo.yaml")])
    assert exit_info.value.code == 2
    assert f"invalid choice: '{subcommand}' (choose from 'fit', 'test')" in capsys.readouterr().err


def test_the_test_command_without_a_checkpoint_is_refused(capsys):
    # Before: it tested a new, untrained agent and printed its returns as if they meant something.
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["test", "--config", str(ROOT / "configs/mbpo.yaml")])
    assert exit_info.value.code == 2
    assert "error: cli.py test needs --ckpt_path" in capsys.readouterr().err


def test_a_resumed_agent_takes_its_steering_settings_from_the_config_and_the_rest_from_the_checkpoint(caplog):
    from jsonargparse import Namespace

    optimizer = Namespace(class_path="torch.optim.Adam", init_args=Namespace(lr=1e-4))
    asked = Namespace(hidden_sizes=[64, 64], gamma=0.99, tau=0.01, compile=False, max_loss_ratio=100.0, optimizer=optimizer)
    resumed = Namespace(hidden_sizes=[256, 256], gamma=0.99, tau=0.005, compile=False, max_loss_ratio=1e4, optimizer=optimizer.clone())

    with caplog.at_level("INFO"):
        cli.settle_resumed_agent_settings(asked, resumed)

    assert resumed.tau == 0.01 and resumed.max_loss_ratio == 100.0  # they only steer the updates
    assert resumed.hidden_sizes == [256, 256]  # the checkpoint's weights have these sizes
    said = caplog.text
    assert "agent settings from the config: tau 0.005 -> 0.01, max_loss_ratio 10000.0 -> 100.0." in said
    assert "kept from the checkpoint, as its networks and buffers hold them: hidden_sizes=[256, 256] (the config asks for [64, 64])" in said
    assert "gamma" not in said and "optimizer" not in said


def test_fit_without_a_config_trains_the_main_job_and_one_with_a_config_is_left_as_it_is():
    assert cli.with_a_config(["fit", "--trainer.max_epochs", "2"]) == ["fit", "--config", str(cli.DEFAULT_CONFIG), "--trainer.max_epochs", "2"]
    assert cli.DEFAULT_CONFIG.is_file() and cli.DEFAULT_CONFIG.name == "mbpo.yaml"
    for given in (["fit", "--config", "configs/sac.yaml"], ["fit", "-c", "x.yaml"], ["fit", "--config=x.yaml"], ["fit", "--help"], ["--help"], []):
        assert cli.with_a_config(given) == given


def test_test_without_a_config_takes_the_checkpoints_run_config_or_asks_for_one(tmp_path):
    run = tmp_path / "runs" / "1" / "abc"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(b"")
    with pytest.raises(cli.ConfigError, match="cli.py test needs --config: the config.yaml of the run"):
        cli.with_a_config(["test", "--ckpt_path", str(checkpoint)])  # no config.yaml in its run folder yet
    (run / "config.yaml").write_text("data: {}\n")
    assert cli.with_a_config(["test", f"--ckpt_path={checkpoint}"]) == ["test", "--config", str(run / "config.yaml"), f"--ckpt_path={checkpoint}"]
    with pytest.raises(cli.ConfigError, match="needs --config"):
        cli.with_a_config(["test", "--ckpt_path", "last"])  # which experiment's last? The config names it.
