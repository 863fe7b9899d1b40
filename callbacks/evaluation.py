"""Evaluation: deterministic-policy episodes on a separate environment every few epochs."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from torchrl.envs import EnvBase

from nmbrl.envs import make_env
from nmbrl.errors import ConfigError
from nmbrl.evaluation import evaluate_policy
from nmbrl.tracking import log_now

EVAL_SEED_OFFSET = 10_000


class Evaluation(Callback):
    """Runs ``episodes`` episodes with the mean action every ``every_n_epochs`` epochs, on rank 0.

    Logs ``eval/return_mean`` and ``eval/return_std`` and keeps ``history``: (env steps, mean return).

    Args:
        every_n_epochs: Epochs between evaluations.
        episodes: Episodes per evaluation.
        max_episode_steps: Cap on the length of one evaluation episode.
    """

    def __init__(self, every_n_epochs: int = 1, episodes: int = 5, max_episode_steps: int = 1000) -> None:
        for name, value in (("every_n_epochs", every_n_epochs), ("episodes", episodes), ("max_episode_steps", max_episode_steps)):
            if value < 1:
                raise ConfigError(f"{name}={value} must be at least 1.")
        self.every_n_epochs = every_n_epochs
        self.episodes = episodes
        self.max_episode_steps = max_episode_steps
        self.env: EnvBase | None = None
        self.history: list[tuple[int, float]] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.env is None and trainer.is_global_zero:
            data = trainer.datamodule
            self.env = make_env(data.env_name, seed=data.seed + EVAL_SEED_OFFSET)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        returns = evaluate_policy(self.env, pl_module.policy, self.episodes, self.max_episode_steps)
        mean, std = float(returns.mean()), float(returns.std(unbiased=False))
        self.history.append((trainer.datamodule.env_steps, mean))
        log_now(trainer, {"eval/return_mean": mean, "eval/return_std": std})
        pl_module.print(f"epoch {trainer.current_epoch}: env steps {trainer.datamodule.env_steps}, eval return {mean:.1f} ± {std:.1f}")

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(h) for h in state_dict["history"]]
