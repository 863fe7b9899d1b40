"""The env-step count in the progress bar."""

from __future__ import annotations

from types import SimpleNamespace

from callbacks import EnvStepMonitor


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
