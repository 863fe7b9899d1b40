"""The data side of training: the real environment, both replay buffers and the stream of SAC batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer
from torchrl.envs import EnvBase

from nmbrl.data.buffers import (
    buffer_state,
    load_buffer_state,
    make_replay_buffer,
    resized,
    sample_mixed_batch,
    sample_mixed_batches,
)
from nmbrl.data.collect import KeepTransitions, make_collector
from nmbrl.data.scratch import make_scratch_folder, remove_scratch_folder
from nmbrl.envs import EnvSpecs, check_env_name, env_specs, make_env
from nmbrl.errors import ConfigError, check_at_least_one
from nmbrl.random_streams import COLLECTOR, RandomStream

# Evaluation episodes run on an environment seeded this far from the training seed.
EVAL_SEED_OFFSET = 10_000

# Builds the agent's batches for one epoch from the data module (``TrainingStream`` unless ``collect_elsewhere``).
BatchStream = Callable[["RLDataModule"], Iterable[TensorDictBase]]


class RLDataModule(LightningDataModule):
    """Steps the real environment and serves mixed real/imagined batches to the agent.

    One training epoch is ``epoch_length`` real env steps; after each real transition the agent
    gets ``updates_per_step`` batches. Before the first epoch, ``random_steps`` env steps are taken
    with a uniform random policy. Under DDP each rank steps its own environment, seeded ``seed + rank``.

    With ``action_repeat`` k, the agent acts every k env steps: one transition spans k env steps
    and carries their summed reward (the usual setting for dm_control tasks; PlaNet's benchmark
    uses 8 for cartpole). Every step count here and in the callbacks (``random_steps``,
    ``epoch_length``, ``every``, the logged ``env_steps``) stays in env steps of the underlying
    simulator, so budgets compare across settings; a transition cut short by the end of an
    episode still counts k.

    Args:
        env: Gymnasium id (``Hopper-v5``) or dm_control ``domain-task`` (``cartpole-swingup``).
        seed: Seed of the real environment (rank ``r`` uses ``seed + r``).
        buffer_size: Capacity of the real replay buffer, in transitions (agent steps).
        random_steps: Initial exploration env steps taken with a uniform random policy.
        epoch_length: Real env steps per training epoch.
        updates_per_step: Agent updates after each real transition (MBPO's ``n_train_repeat``).
        batch_size: Transitions in each agent batch.
        real_ratio: Fraction of each batch drawn from real data, sample by sample; the rest is imagined.
        action_repeat: Env steps each action is held for; ``random_steps`` and ``epoch_length``
            must be multiples of it.
        model_buffer_dir: Keep the model buffer in memory-mapped files under this folder instead of
            in memory (MBPO's Humanoid settings ask for 12.5M imagined transitions). The files are
            deleted when the buffer is resized and when ``fit`` ends.
        checkpoint_model_buffer: Save the imagined transitions in checkpoints too. With ``False``
            a checkpoint holds the networks and the real data only (the model buffer of MBPO's
            Humanoid settings is about 36 GB), and a resumed run refills the model buffer from
            the restored world model before its first agent update.
        test_episodes: Episodes run by ``cli.py test`` with the deterministic policy.

    Another process may step the environment instead (concurrent mode): ``collect_elsewhere``
    is the seam for it.

    Checkpoints hold both buffers (contents and write positions) and the env-step count, so a
    resumed run continues with its buffers as full as they were (the model buffer only with
    ``checkpoint_model_buffer``). The real environment itself starts a new episode on resume,
    reseeded from the seed and the env-step count.
    """

    def __init__(
        self,
        env: str = "cartpole-swingup",
        seed: int = 0,
        buffer_size: int = 1_000_000,
        random_steps: int = 5000,
        epoch_length: int = 1000,
        updates_per_step: int = 20,
        batch_size: int = 256,
        real_ratio: float = 0.05,
        action_repeat: int = 1,
        model_buffer_dir: str | None = None,
        checkpoint_model_buffer: bool = True,
        test_episodes: int = 10,
    ) -> None:
        super().__init__()
        check_env_name(env)
        if not 0.0 <= real_ratio <= 1.0:
            raise ConfigError(f"real_ratio={real_ratio} must lie in [0, 1]: it is the fraction of each batch drawn from real data.")
        check_at_least_one(
            buffer_size=buffer_size,
            epoch_length=epoch_length,
            batch_size=batch_size,
            updates_per_step=updates_per_step,
            test_episodes=test_episodes,
            action_repeat=action_repeat,
        )
        if random_steps < 0:
            raise ConfigError(f"random_steps={random_steps} must not be negative.")
        for name, steps in (("random_steps", random_steps), ("epoch_length", epoch_length)):
            if steps % action_repeat:
                raise ConfigError(
                    f"{name}={steps} is not a multiple of action_repeat={action_repeat}: each real transition "
                    f"takes {action_repeat} env steps. Use a multiple of {action_repeat}."
                )
        self.env_name = env
        self.seed = seed
        self.buffer_size = buffer_size
        self.random_steps = random_steps
        self.epoch_length = epoch_length
        self.updates_per_step = updates_per_step
        self.batch_size = batch_size
        self.real_ratio = real_ratio
        self.action_repeat = action_repeat
        self.model_buffer_dir = model_buffer_dir
        self.checkpoint_model_buffer = checkpoint_model_buffer
        self.test_episodes = test_episodes
        self.env: EnvBase | None = None
        self.real_buffer: ReplayBuffer | None = None
        self.model_buffer: ReplayBuffer | None = None
        self.model_buffer_capacity = 0
        self._model_buffer_folder: str | None = None
        self.env_steps = 0
        self._eval_env: EnvBase | None = None
        self._collector = None
        self._collector_iter: Iterator | None = None
        self._episodes: KeepTransitions | None = None
        self._collection_stream: RandomStream | None = None
        self._batch_stream: BatchStream | None = None

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def transitions(self, env_steps: int) -> int:
        """Real transitions it takes to cover ``env_steps`` env steps (``action_repeat`` each, rounded up)."""
        return -(-env_steps // self.action_repeat)

    @property
    def updates_per_epoch(self) -> int:
        return self.transitions(self.epoch_length) * self.updates_per_step

    @property
    def specs(self) -> EnvSpecs:
        return env_specs(self.env)

    @property
    def eval_seed(self) -> int:
        return self.seed + EVAL_SEED_OFFSET

    @property
    def eval_env(self) -> EnvBase:
        """A separately seeded copy of the environment for evaluation episodes, built on first use."""
        if self._eval_env is None:
            self._eval_env = make_env(self.env_name, seed=self.eval_seed, action_repeat=self.action_repeat)
        return self._eval_env

    def setup(self, stage: str) -> None:
        if self.env is None:
            self.env = make_env(self.env_name, seed=self.seed + self.rank, action_repeat=self.action_repeat)
            self.real_buffer = make_replay_buffer(self.buffer_size)

    def teardown(self, stage: str) -> None:
        if self._collector is not None:
            self._collector.shutdown()
            self._collector = self._collector_iter = None
        if self._model_buffer_folder is not None:  # the checkpoints hold what is worth keeping
            self.model_buffer, self.model_buffer_capacity = None, 0
            remove_scratch_folder(self._model_buffer_folder)
            self._model_buffer_folder = None

    def train_dataloader(self) -> Iterable[TensorDictBase]:
        self.check_checkpoint_interval()
        return TrainingStream(self) if self._batch_stream is None else self._batch_stream(self)

    def check_checkpoint_interval(self) -> None:
        """ConfigError for a ModelCheckpoint ``every_n_train_steps`` that the update count would skip past.

        Lightning checks it after each batch, and each batch here is ``updates_per_step`` updates.
        """
        for callback in self.trainer.checkpoint_callbacks if self.trainer is not None else []:
            every = getattr(callback, "_every_n_train_steps", 0)
            if every and every % self.updates_per_step:
                raise ConfigError(
                    f"ModelCheckpoint every_n_train_steps={every} is not a multiple of data.updates_per_step="
                    f"{self.updates_per_step}: it counts agent updates, and they advance {self.updates_per_step} per "
                    f"env step, so most checkpoints would be skipped. Use a multiple, such as "
                    f"{-(-every // self.updates_per_step) * self.updates_per_step}."
                )

    def test_dataloader(self) -> range:
        """``cli.py test`` runs one evaluation episode per item (see ``SACAgent.test_step``)."""
        return range(self.test_episodes)

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {"env_steps": self.env_steps, "real_buffer": buffer_state(self.real_buffer)}
        if self._collection_stream is not None:
            state["collection_stream"] = self._collection_stream.state_dict()
        if self.model_buffer is not None and self.checkpoint_model_buffer:
            state["model_buffer"] = buffer_state(self.model_buffer)
            state["model_buffer_capacity"] = self.model_buffer_capacity
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.env_steps = state_dict["env_steps"]
        if "collection_stream" in state_dict:  # absent in concurrent mode and in checkpoints before it was kept
            self._collection_stream = RandomStream.from_state_dict(state_dict["collection_stream"])
        load_buffer_state(self.real_buffer, state_dict["real_buffer"])
        if "model_buffer" in state_dict:
            self.resize_model_buffer(state_dict["model_buffer_capacity"])
            load_buffer_state(self.model_buffer, state_dict["model_buffer"])
        # A fresh episode on resume; its seed depends on where the run stopped, not only on `seed`.
        self.env.set_seed(self.seed + self.rank + self.env_steps)

    # --- real data ------------------------------------------------------------------------------

    def collect(self, transitions: int) -> None:
        """Take ``transitions`` real transitions (``action_repeat`` env steps each) with the exploration policy.

        Its random numbers come from the run's collector stream, as in concurrent mode's collector process.
        """
        if self._collection_stream is None:
            self._collection_stream = RandomStream.of_run(COLLECTOR)
        with self._collection_stream.active():
            if self._collector_iter is None:
                module = self.trainer.lightning_module
                random_transitions = self.transitions(max(self.random_steps - self.env_steps, 0))
                self._collector, self._episodes = make_collector(
                    self.env, module.policy, self.real_buffer, random_transitions, module.device
                )
                self._collector_iter = iter(self._collector)
            for _ in range(transitions):
                next(self._collector_iter)
        self.env_steps += transitions * self.action_repeat

    @property
    def epoch_end(self) -> int:
        """The env-step count at which the current training epoch ends."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return self.random_steps + (epoch + 1) * self.epoch_length

    def explore(self) -> None:
        """The initial uniform-random exploration, once per run."""
        remaining = self.random_steps - self.env_steps
        if remaining > 0:
            message = f"Collecting {remaining} random exploration env steps in {self.env_name}."
            progress_bar = getattr(self.trainer, "progress_bar_callback", None)
            if progress_bar is not None and progress_bar.is_enabled:
                progress_bar.print(message)  # above the bar, not glued to the end of its line
            else:
                rank_zero_info(message)
            self.collect(self.transitions(remaining))

    def pop_episode_returns(self) -> list[float]:
        """Returns of the real episodes finished since the last call."""
        if self._episodes is None:
            return []
        returns, self._episodes.finished_returns = self._episodes.finished_returns, []
        return returns

    # --- the seam for collecting elsewhere ---------------------------------------------------

    def collect_elsewhere(self, real_buffer: ReplayBuffer, batch_stream: BatchStream) -> None:
        """Leave the real environment to someone else, such as concurrent mode's collector process.

        From now on the real transitions are in ``real_buffer``, which that collector fills (it
        should already hold what the current buffer holds; checkpoints save and restore it as
        usual), and ``batch_stream(self)`` serves each epoch's batches instead of ``TrainingStream``.
        The stream yields a ``updates_per_step x batch_size`` batch per real transition, as
        ``TrainingStream`` does, and keeps ``env_steps`` at the env steps its batches have seen.
        Call it before a checkpoint is restored (in a callback's ``setup``), so that the restored
        transitions land in the new buffer.
        """
        self.real_buffer = real_buffer
        self._batch_stream = batch_stream

    # --- agent batches ------------------------------------------------------------------------

    def sample_batch(self) -> TensorDictBase:
        """One mixed batch of ``batch_size`` transitions."""
        return sample_mixed_batch(self.real_buffer, self.model_buffer, self.batch_size, self.real_ratio)

    def sample_step_batches(self) -> TensorDictBase:
        """The ``updates_per_step x batch_size`` mixed batches of one env step, in one sampling call per buffer."""
        return sample_mixed_batches(self.real_buffer, self.model_buffer, self.updates_per_step, self.batch_size, self.real_ratio)

    def resize_model_buffer(self, capacity: int) -> None:
        """Give the model buffer ``capacity``, keeping what it holds (newest data wins on shrinking)."""
        if self.model_buffer is None or self.model_buffer_capacity != capacity:
            old_folder, folder = self._model_buffer_folder, None
            if self.model_buffer_dir is not None:
                folder = make_scratch_folder(self.model_buffer_dir, self.rank)
            self.model_buffer = resized(self.model_buffer, capacity, folder)
            self.model_buffer_capacity = capacity
            self._model_buffer_folder = folder
            remove_scratch_folder(old_folder)  # the old files would stay on disk: GBs per resize for Humanoid


class StepStream:
    """Base of the training "dataloaders": one batch per real transition, ``epoch_length`` transitions an epoch.

    A stream's position is the data module's env steps and the trainer's update count, both
    restored with a checkpoint, so the stream itself has nothing to save. It still has Lightning's
    ``state_dict``/``load_state_dict``: Lightning warns on every mid-epoch resume (Ctrl+C) that a
    loader without them "can cause unreliable results", which here is not so.
    """

    def __init__(self, data: RLDataModule) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.transitions(self.data.epoch_length)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class TrainingStream(StepStream):
    """The training "dataloader": per real transition, one ``updates_per_step x batch_size`` batch, for one epoch.

    The agent makes ``updates_per_step`` updates of each (``SACAgent.training_step``), so Lightning's
    batches are real transitions and its ``global_step`` counts agent updates. The batches of a
    transition are sampled together right after it is collected; on the env steps where the
    world model is retrained and rolled out (in ``on_train_batch_start``), they were drawn from the
    model buffer as it was before that rollout. The epoch runs until ``data.epoch_end`` env steps,
    so an epoch resumed from a mid-epoch checkpoint (Ctrl+C) takes only its remaining steps.
    """

    def __iter__(self) -> Iterator[TensorDictBase]:
        data = self.data
        data.explore()
        for _ in range(data.transitions(max(data.epoch_end - data.env_steps, 0))):
            data.collect(1)
            yield data.sample_step_batches()
