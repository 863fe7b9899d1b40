"""The env-step count in the progress bar."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from callbacks import EnvStepMonitor, EnvStepProgressBar
from callbacks.env_steps import showing_phase


class RecordingModule:
    def __init__(self) -> None:
        self.logged: list[tuple[str, float]] = []

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged.append((name, value))


def test_the_progress_bar_shows_the_env_steps_of_the_epochs_last_batch() -> None:
    data = SimpleNamespace(env_steps=0, pop_episode_returns=list)
    trainer = SimpleNamespace(datamodule=data, log_every_n_steps=100, num_training_batches=250, global_step=0)
    module = RecordingModule()
    monitor = EnvStepMonitor(window_s=1e9)

    for batch_idx in range(250):
        data.env_steps += 1
        monitor.on_train_batch_end(trainer, module, None, None, batch_idx)

    # Batches 0, 100 and 200 by log_every_n_steps, then the last one: what the evaluation line will show.
    assert module.logged == [("env_steps", 1.0), ("env_steps", 101.0), ("env_steps", 201.0), ("env_steps", 250.0)]


@pytest.mark.parametrize("env_steps", [1000.0, 1101.0, 20000.0])
def test_the_progress_bar_writes_env_steps_as_a_whole_number(env_steps: float) -> None:
    trainer = SimpleNamespace(loggers=[], progress_bar_metrics={"env_steps": env_steps, "other": 0.25})

    def rendered(progress_bar: TQDMProgressBar) -> str:
        bar = Tqdm(total=10, file=io.StringIO())
        bar.set_postfix(progress_bar.get_metrics(trainer, None))  # as TQDMProgressBar does after each batch
        return str(bar)

    assert f"env_steps={int(env_steps)}," in rendered(EnvStepProgressBar())
    assert "other=0.250" in rendered(EnvStepProgressBar())  # the rest as Lightning writes it
    assert f"env_steps={int(env_steps)}," not in rendered(TQDMProgressBar())  # Lightning's own: 1e+3, 1101.0, 2e+4


def test_a_phase_shows_in_the_bar_while_it_runs_and_goes_when_it_ends() -> None:
    progress_bar = EnvStepProgressBar()
    trainer = SimpleNamespace(loggers=[], progress_bar_metrics={"env_steps": 300.0}, progress_bar_callback=progress_bar, lightning_module=None)
    progress_bar._trainer = trainer
    terminal = io.StringIO()
    progress_bar._train_progress_bar = Tqdm(total=10, file=terminal)

    with showing_phase(trainer, "world model: retraining") as show:
        assert progress_bar.get_metrics(trainer, None)["phase"] == "world model: retraining"
        show("world model: epoch 3, holdout MSE 0.25")
        assert "env_steps=300, phase=world model: epoch 3, holdout MSE 0.25" in terminal.getvalue()  # drawn at once
    assert "phase" not in progress_bar.get_metrics(trainer, None)

    with pytest.raises(KeyboardInterrupt), showing_phase(trainer, "evaluation: 5 episodes"):
        raise KeyboardInterrupt
    assert "phase" not in progress_bar.get_metrics(trainer, None)


def test_a_phase_is_no_error_without_the_env_step_progress_bar() -> None:
    for progress_bar in (None, TQDMProgressBar()):
        with showing_phase(SimpleNamespace(progress_bar_callback=progress_bar), "evaluation: 5 episodes") as show:
            show("evaluation: still")
