"""Evaluation: deterministic-policy episodes during ``fit``, and the report of ``cli.py test``."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info
from torchrl.envs import EnvBase

from callbacks.env_steps import showing_phase
from nmbrl.envs import make_env
from nmbrl.errors import check_at_least_one
from nmbrl.evaluation import evaluate_policy, run_episode
from nmbrl.plots import plot_eval_returns
from nmbrl.tracking import log_now, run_dir
from nmbrl.video import write_video


class Evaluation(Callback):
    """Evaluates the deterministic policy on a separately seeded environment, on rank 0.

    The policy evaluated is the agent's ``evaluation_policy``: the actor, or the Polyak average of
    its weights when ``SACAgent.averaged_policy_tau`` is set.

    During ``fit``: ``episodes`` episodes every ``every_n_epochs`` epochs, run side by side on a
    batch of ``episodes`` environments (one policy call per step for all of them), logged as
    ``eval/return_mean`` and ``eval/return_std`` and kept in ``history`` (env steps, mean return);
    at the end, the curve is saved as ``eval_returns.png`` in the run folder and in MLflow.

    After ``cli.py test`` (whose episodes the agent runs, see ``SACAgent.test_step``): prints a
    table of the returns, writes it as ``test_returns.csv``, and records one more episode as a
    video, both into the run folder (``test/``) and the run's MLflow artifacts.

    Args:
        every_n_epochs: Epochs between evaluations.
        episodes: Episodes per evaluation.
        max_episode_steps: Cap on the length of one evaluation episode, in env steps.
        video: Format of the test video, or "none" for no video.
        video_size: Width and height of the video frames, in pixels.
        video_fps: Frames per second of the video.
        also_actor: When the agent evaluates an averaged policy, also evaluate the actor itself on
            as many episodes, logged as ``eval/actor_return_mean``: both curves from one run.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        episodes: int = 5,
        max_episode_steps: int = 1000,
        video: Literal["mp4", "gif", "none"] = "mp4",
        video_size: int = 256,
        video_fps: int = 30,
        also_actor: bool = False,
    ) -> None:
        check_at_least_one(
            every_n_epochs=every_n_epochs,
            episodes=episodes,
            max_episode_steps=max_episode_steps,
            video_size=video_size,
            video_fps=video_fps,
        )
        self.every_n_epochs = every_n_epochs
        self.episodes = episodes
        self.max_episode_steps = max_episode_steps
        self.video = video
        self.video_size = video_size
        self.video_fps = video_fps
        self.also_actor = also_actor
        self.history: list[tuple[int, float]] = []
        self.env: EnvBase | None = None

    # --- during fit ---------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        data = trainer.datamodule
        started = time.perf_counter()
        if self.env is None:
            self.env = make_env(data.env_name, seed=data.eval_seed, action_repeat=data.action_repeat, num_envs=self.episodes)
        max_steps = data.transitions(self.max_episode_steps)
        with showing_phase(trainer, f"evaluation: {self.episodes} episodes"):
            returns = evaluate_policy(self.env, pl_module.evaluation_policy, max_steps)
            also_actor = self.also_actor and pl_module.evaluation_policy is not pl_module.policy
            actor_returns = evaluate_policy(self.env, pl_module.policy, max_steps) if also_actor else None
        mean, std = float(returns.mean()), float(returns.std(unbiased=False))
        self.history.append((data.env_steps, mean))
        metrics = {"eval/return_mean": mean, "eval/return_std": std}
        if actor_returns is not None:
            metrics["eval/actor_return_mean"] = float(actor_returns.mean())
        log_now(trainer, {**metrics, "time/eval_s": time.perf_counter() - started})
        actor = f" (actor {metrics['eval/actor_return_mean']:.1f})" if "eval/actor_return_mean" in metrics else ""
        pl_module.print(f"epoch {trainer.current_epoch}: env steps {data.env_steps}, eval return {mean:.1f} ± {std:.1f}{actor}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = trainer.logger
        if trainer.is_global_zero and self.history and isinstance(logger, MLFlowLogger):
            path = plot_eval_returns(logger.experiment, logger.run_id, run_dir(trainer) / "eval_returns.png")
            logger.experiment.log_artifact(logger.run_id, str(path))

    # --- after cli.py test --------------------------------------------------------------------

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        results = pl_module.test_results
        folder = run_dir(trainer) / "test"
        pl_module.print(returns_table(results))
        files = [write_returns_csv(results, folder / "test_returns.csv")]
        if self.video != "none":
            # Rendering takes a while (on 2 cores without a GPU, about half a minute for 1000 frames):
            # say so, as the test bar already stands at its end.
            pl_module.print(f"video: recording episode 0 again at {self.video_size}x{self.video_size} ...")
            try:
                files.append(self.record_video(trainer, pl_module, folder))
                pl_module.print(f"video: {files[-1]}")
            except Exception as error:  # the video is a bonus: the returns above are still written and logged
                # A message, not a warning, which would also print this source line.
                rank_zero_info(
                    f"no video: {trainer.datamodule.env_name} could not be rendered here ({type(error).__name__}: {error}). "
                    "Pass --evaluation.video none to skip it."
                )
        logger = trainer.logger
        if isinstance(logger, MLFlowLogger):
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="test")

    def record_video(self, trainer: Trainer, pl_module: LightningModule, folder: Path) -> Path:
        """Test episode 0 again (same start state), on a rendering copy of the evaluation environment."""
        data = trainer.datamodule
        env = make_env(data.env_name, seed=data.eval_seed, render_size=self.video_size, action_repeat=data.action_repeat)
        try:
            episode = run_episode(env, pl_module.evaluation_policy, data.transitions(self.max_episode_steps), seed=data.eval_seed)
        finally:
            env.close()
        ret = float(episode["next", "reward"].sum())
        name = f"episode-{data.env_steps}steps-return{ret:.0f}.{self.video}"
        return write_video(episode["pixels"], folder / name, fps=self.video_fps)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(h) for h in state_dict["history"]]


def returns_table(results: list[tuple[float, int, int]]) -> str:
    """A plain-text table: one row per episode (return, env steps, reset seed), then mean and standard deviation."""
    returns = [r for r, _, _ in results]
    mean = sum(returns) / len(returns)
    std = (sum((r - mean) ** 2 for r in returns) / len(returns)) ** 0.5
    lines = ["| episode | return | steps | seed |", "| --- | --- | --- | --- |"]
    lines += [f"| {i} | {r:.2f} | {n} | {seed} |" for i, (r, n, seed) in enumerate(results)]
    lines.append(f"| mean ± std | {mean:.2f} ± {std:.2f} | | |")
    return "\n".join(lines)


def write_returns_csv(results: list[tuple[float, int, int]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["episode", "return", "steps", "seed"])
        writer.writerows((i, r, n, seed) for i, (r, n, seed) in enumerate(results))
    return path
