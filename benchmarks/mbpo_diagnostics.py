"""Short checks of an MBPO run against the paper's algorithm, from one of its checkpoints (issue 25, part 4).

When MBPO learns less than the paper on a task, these say whether the run did what the paper
does, one check per suspect, each measured on what the run itself stored or logged:

- termination: the rule the world model uses against the ``terminated`` flags of every real
  transition, and in live episodes of the trained policy (gymnasium raw, in float64; dm_control
  tasks through the run's own TorchRL env);
- rollout schedule: the logged rollout horizon at each env step against the paper's, whose
  epochs count from the end of the random steps;
- real ratio: the share of real rows in the batches the data module draws, and its spread from
  batch to batch (per-sample mixing gives a binomial spread, per-batch mixing all or nothing);
- model buffer: the logged size after each rollout against MBPO's formula, and never shrinking;
- holdout and elites: every member's one-step error on real transitions the model has not been
  trained on, against a model that predicts no change; the elites should be among the best;
- target entropy: the configured target, and the entropy and alpha logged over the last epochs;
- random steps: the first ``random_steps`` actions of the real buffer against a uniform draw,
  and the env step of the first SAC update and of the first model training;
- value estimates: the critics' Q on the states and actions of live episodes against the
  discounted return that followed, which shows over-estimation (the policy exploiting the model).

Examples (issue 25's Hopper run, and the default job):

    python benchmarks/mbpo_diagnostics.py /work/runs/hopper/runs/2/<run id>/checkpoints/last.ckpt
    python benchmarks/mbpo_diagnostics.py runs/1/<run id>/checkpoints/last.ckpt

It prints one table; ``ok`` is blank where a row is information rather than a check.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nmbrl.agent.update import critic_forward, critic_layers  # noqa: E402
from nmbrl.checkpoints import CHECKPOINT_KEY, read_checkpoint  # noqa: E402
from nmbrl.data.buffers import FILLED_ROWS, model_buffer_capacity, sample_mixed_batches  # noqa: E402
from nmbrl.envs.termination import termination_rule  # noqa: E402
from nmbrl.rollouts import rollout_horizon  # noqa: E402


@dataclass
class Finding:
    check: str
    measured: str
    expected: str
    ok: bool | None = None  # None: information, not a pass or fail


@dataclass
class Run:
    """What the checks read: the checkpoint, its run's config and its logged metrics."""

    checkpoint: dict
    config: dict
    metrics: dict[str, list[tuple[int, float]]]  # key -> (env steps, value), oldest first

    @property
    def record(self) -> dict:
        return self.checkpoint[CHECKPOINT_KEY]

    def buffer(self, name: str) -> TensorDict | None:
        state = self.checkpoint["RLDataModule"].get(name)
        if state is None:
            return None
        storage = state["_storage"]
        return TensorDict(storage[FILLED_ROWS], batch_size=[storage["_len"]])

    def section(self, name: str) -> dict:
        """``init_args`` of a class-path section (``rollouts``), or the section itself (``data``)."""
        section = self.config.get(name) or {}
        return section.get("init_args", section)


def load_run(checkpoint_path: Path, config_path: Path | None) -> Run:
    checkpoint = read_checkpoint(checkpoint_path)
    folder = checkpoint_path.parent.parent
    config = yaml.safe_load((config_path or folder / "config.yaml").read_text())
    record = checkpoint[CHECKPOINT_KEY]
    return Run(checkpoint, config, logged_metrics(record["tracking_uri"], record["run_id"]))


def logged_metrics(tracking_uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run, the last value logged at each step (a resumed run logs some steps twice)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    metrics = {}
    for key in client.get_run(run_id).data.metrics:
        latest: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(run_id, key):
            if m.step not in latest or m.timestamp >= latest[m.step][0]:
                latest[m.step] = (m.timestamp, m.value)
        metrics[key] = sorted((step, value) for step, (_, value) in latest.items())
    return metrics


# --- the checks ---------------------------------------------------------------------------------


def check_termination_on_real_data(run: Run) -> Finding:
    rule = termination_rule(run.record["env"])
    real = run.buffer("real_buffer")
    if rule is None:
        return Finding("termination rule (real buffer)", "no exact rule: the model learns termination", "-")
    predicted = rule(real["next", "observation"]).reshape(-1)
    stored = real["next", "terminated"].reshape(-1)
    wrong = int((predicted != stored).sum())
    return Finding(
        "termination rule (real buffer)",
        f"{wrong} of {len(stored):,} transitions disagree ({int(stored.sum())} terminal)",
        "0 disagree",
        wrong == 0,
    )


def paper_horizon(env_steps: int, random_steps: int, epoch_length: int, schedule: list[int]) -> int:
    """MBPO's rollout length at ``env_steps``: its epochs start after the random steps."""
    return rollout_horizon(max(env_steps - random_steps, 0) // epoch_length, schedule)


def check_rollout_schedule(run: Run) -> Finding:
    data, rollouts = run.section("data"), run.section("rollouts")
    schedule = rollouts.get("schedule", [20, 100, 1, 1])
    logged = run.metrics.get("rollout/horizon", [])
    # A rollout at an epoch's first env step may still count the epoch before (the horizon is read
    # as the step's batch starts): both are accepted there.
    wrong = [
        (step, int(h))
        for step, h in logged
        if int(h) != paper_horizon(step, data["random_steps"], data["epoch_length"], schedule)
        and int(h) != paper_horizon(step - 1, data["random_steps"], data["epoch_length"], schedule)
    ]
    last_step, last_h = logged[-1] if logged else (0, 0)
    return Finding(
        f"rollout schedule {schedule}",
        f"{len(wrong)} of {len(logged)} rollouts off; last: horizon {int(last_h)} at {last_step:,}"
        + (f"; first off: {wrong[0][1]} at {wrong[0][0]:,}" if wrong else ""),
        f"horizon {paper_horizon(last_step, data['random_steps'], data['epoch_length'], schedule)} at {last_step:,}",
        not wrong and bool(logged),
    )


def check_real_ratio(run: Run, batches: int = 200) -> Finding:
    """Draw as the data module does, from two buffers that say where each row came from."""
    data = run.section("data")
    real_ratio, batch_size = data.get("real_ratio", 0.05), data.get("batch_size", 256)
    buffers = []
    for source in (1.0, 0.0):
        buffer = ReplayBuffer(storage=LazyTensorStorage(1000), batch_size=None)
        buffer.extend(TensorDict(real=torch.full((1000, 1), source), batch_size=[1000]))
        buffers.append(buffer)
    drawn = sample_mixed_batches(buffers[0], buffers[1], batches, batch_size, real_ratio)["real"]
    per_batch = drawn.sum(dim=(1, 2))
    expected_std = math.sqrt(batch_size * real_ratio * (1 - real_ratio))
    share = float(per_batch.sum()) / (batches * batch_size)
    spread = float(per_batch.std())
    binomial = abs(share - real_ratio) < 4 * expected_std / math.sqrt(batches) / batch_size and 0.6 < spread / max(expected_std, 1e-9) < 1.4
    return Finding(
        f"real_ratio {real_ratio}",
        f"share {share:.4f}; real rows per batch {per_batch.mean():.1f} ± {spread:.1f}",
        f"{real_ratio}; {batch_size * real_ratio:.1f} ± {expected_std:.1f} (per-sample mix)",
        binomial,
    )


def check_model_buffer(run: Run) -> Finding:
    data, rollouts = run.section("data"), run.section("rollouts")
    sizes = run.metrics.get("rollout/model_buffer_size", [])
    horizons = dict(run.metrics.get("rollout/horizon", []))
    shrank = [step for (_, a), (step, b) in zip(sizes, sizes[1:]) if b < a]
    over = []
    for step, size in sizes:
        capacity = model_buffer_capacity(
            int(horizons.get(step, 1)), rollouts.get("batch_size", 100_000), data["epoch_length"],
            rollouts.get("every", 250), rollouts.get("retain_epochs", 1),
        )  # fmt: skip
        if size > capacity:
            over.append(step)
    model = run.buffer("model_buffer")
    held = 0 if model is None else len(model)
    last = int(sizes[-1][1]) if sizes else 0
    return Finding(
        "model buffer retention",
        f"{last:,} after the last rollout, {held:,} in the checkpoint; shrank {len(shrank)} times, over capacity {len(over)} times",
        "MBPO's k x batch x rollouts per epoch x retain epochs; never wiped",
        not shrank and not over and bool(sizes),
    )


def world_model_of(run: Run):
    from nmbrl.world_model.loading import world_model_from_checkpoint

    return world_model_from_checkpoint(run.checkpoint)


def check_holdout_and_elites(run: Run, world_model, live: TensorDict | None) -> list[Finding]:
    """One-step errors on real transitions the model has not seen: live episodes' if given, else
    those after its last retraining, else (saying so) the last 1000 of the real buffer."""
    real = run.buffer("real_buffer")
    trained_on = next((s.get("trained_on") for s in run.checkpoint["callbacks"].values() if isinstance(s, dict) and "world_model" in s), None)
    # Row i of the real buffer is env step i + 1 (it never wraps before the budget's end in MBPO's settings).
    fresh = len(real) - trained_on if trained_on else 0
    if live is not None and len(live) >= 50:
        rows, what = live, f"{len(live):,} transitions of the live episodes (unseen)"
    elif fresh >= 50:
        rows, what = real[-fresh:], f"{fresh:,} transitions after the last retraining (unseen)"
    else:
        rows, what = real[-1000:], "the last 1,000 real transitions (seen in training)"
    inputs, targets, _ = world_model.training_pairs(rows)
    with torch.no_grad():
        x = world_model.input_norm.normalize(inputs).expand(world_model.hparams.ensemble_size, -1, -1)
        mean, _, _ = world_model.network(x)
        scale = world_model.target_norm.std  # errors in units of each target's spread in the real data
        normalised_error = (((world_model.target_norm.denormalize(mean) - targets) / scale) ** 2).mean(dim=(1, 2))
    no_change = targets.clone()
    no_change[:, 1:] = 0.0  # next observation = observation
    no_change[:, :1] = targets[:, :1].mean()  # the mean reward
    baseline = float(((((no_change - targets) / scale) ** 2).mean()))
    elites = sorted(world_model.elites.tolist())
    best = sorted(torch.argsort(normalised_error)[: len(elites)].tolist())
    errors = ", ".join(f"{i}{'*' if i in elites else ''}: {e:.2g}" for i, e in enumerate(normalised_error.tolist()))
    reward_error = float((world_model.target_norm.denormalize(mean)[..., 0] - targets[:, 0]).abs()[world_model.elites].mean())
    return [
        Finding(
            "one-step error per member (* elite)",
            f"{errors}; on {what}",
            f"all well under the no-change model's {baseline:.3f}",
            bool((normalised_error[world_model.elites] < 0.5 * baseline).all()),
        ),
        Finding("elites", f"{elites}; best {len(elites)} on these data: {best}", "mostly the same members", None),
        Finding(
            "reward error of the elites",
            f"{reward_error:.3f} per step (mean absolute error)",
            f"small against the rewards' spread, {float(targets[:, 0].std()):.3f}",
            reward_error < 0.25 * float(targets[:, 0].std()),
        ),
    ]


def mean_over_last(values: list[tuple[int, float]], since: int) -> float:
    recent = [v for s, v in values if s >= since]
    return float(np.mean(recent)) if recent else float("nan")


def check_target_entropy(run: Run, paper_target: float | None) -> Finding:
    target = run.checkpoint["hyper_parameters"]["target_entropy"]
    if target == "auto":  # what SACLoss resolved it to: minus the action size
        target = run.checkpoint["state_dict"]["loss_module._target_entropy"].item()
    target = float(target)
    entropy, alpha = run.metrics.get("train/entropy", []), run.metrics.get("train/alpha", [])
    since = (entropy[-1][0] - 5000) if entropy else 0
    measured = f"target {target:g}; logged entropy {mean_over_last(entropy, since):.2f}, alpha {mean_over_last(alpha, since):.3f} over the last 5k env steps"
    expected = f"paper {paper_target:g}; entropy near the target" if paper_target is not None else "entropy near the target"
    near = abs(mean_over_last(entropy, since) - target) < 0.5
    return Finding("target entropy", measured, expected, (paper_target is None or target == paper_target) and near)


def check_random_steps(run: Run) -> list[Finding]:
    random_steps = run.section("data")["random_steps"]
    actions = run.buffer("real_buffer")["action"][:random_steps]
    mean, std, n = float(actions.mean()), float(actions.std()), actions.numel()
    uniform_std = 1 / math.sqrt(3)
    first_update = min((steps[0][0] for key, steps in run.metrics.items() if key.startswith("train/") and key != "train/episode_return" and steps), default=None)
    first_model = run.metrics.get("model/epochs", [(None, None)])[0][0]
    return [
        Finding(
            f"first {random_steps:,} actions",
            f"mean {mean:+.3f}, std {std:.3f}, range [{float(actions.min()):.3f}, {float(actions.max()):.3f}]",
            f"uniform on [-1, 1]: mean 0, std {uniform_std:.3f}",
            # within 4 standard errors of a uniform draw's mean and standard deviation
            abs(mean) < 4 * uniform_std / math.sqrt(n) and abs(std - uniform_std) < 4 * 0.258 / math.sqrt(n) and float(actions.abs().max()) <= 1.0,
        ),
        Finding(
            "first SAC update, first model training",
            f"env step {first_update:,} and {first_model:,}" if first_update and first_model else f"{first_update}, {first_model}",
            f"at or after {random_steps:,} (losses are logged every log_every_n_steps)",
            bool(first_update and first_model and first_update >= random_steps and first_model >= random_steps),
        ),
    ]


@dataclass
class Episode:
    """One episode of the trained policy in the real env: flat float32 observations, as training saw them."""

    observations: list[np.ndarray]
    actions: list[np.ndarray]
    rewards: list[float]
    transitions: list[TensorDict]
    truncated: bool
    terminal_disagreements: int  # steps where the termination rule and the env disagree
    forward: float | None  # displacement along qpos[0] (gymnasium), None for dm_control

    def record(self, observation, action, reward: float, next_observation, terminated: bool, ruled: bool | None) -> None:
        """One step; ``ruled`` is the termination rule's verdict on ``next_observation`` (None: no rule)."""
        self.observations.append(np.asarray(observation, dtype=np.float32))
        self.actions.append(np.asarray(action))
        self.rewards.append(float(reward))
        self.transitions.append(transition(observation, action, reward, next_observation, terminated))
        if ruled is not None:
            self.terminal_disagreements += ruled != terminated


def gymnasium_episode(env, trained, rule, seed: int) -> Episode:
    """Steps the raw gymnasium env (float64), so that the termination rule is checked on what the env gives."""
    observation, _ = env.reset(seed=seed)
    x_start = float(env.unwrapped.data.qpos[0])
    episode = Episode([], [], [], [], False, 0, None)
    while True:
        action = trained.act(observation)
        next_observation, reward, terminated, truncated, _ = env.step(action)
        ruled = None if rule is None else bool(rule(torch.as_tensor(next_observation, dtype=torch.float64)).item())
        episode.record(observation, action, reward, next_observation, terminated, ruled)
        observation = next_observation
        if terminated or truncated:
            episode.truncated = bool(truncated)
            episode.forward = float(env.unwrapped.data.qpos[0]) - x_start
            return episode


def dm_control_episode(env_name: str, action_repeat: int, trained, rule, seed: int) -> Episode:
    """Steps the run's own TorchRL env (``make_env``): dm_control observations flattened as in training."""
    from torchrl.envs.utils import step_mdp

    from nmbrl.envs import make_env

    env = make_env(env_name, seed=seed, action_repeat=action_repeat)
    episode = Episode([], [], [], [], False, 0, None)
    try:
        step = env.reset()
        while True:
            observation = step["observation"]
            step["action"] = trained.act(observation)
            step = env.step(step)
            after = step["next"]
            terminated, truncated = bool(after["terminated"].item()), bool(after["truncated"].item())
            ruled = None if rule is None else bool(rule(after["observation"]).item())
            episode.record(observation, step["action"], after["reward"].item(), after["observation"], terminated, ruled)
            if terminated or truncated:
                episode.truncated = truncated
                return episode
            step = step_mdp(step)
    finally:
        env.close()


def live_episodes(run: Run, episodes: int, seed: int = 12345) -> tuple[list[Finding], TensorDict]:
    """Episodes of the deterministic policy in the real env: termination, behaviour, values.

    Gymnasium envs run raw (float64), dm_control tasks through the run's TorchRL env. Also returns
    their transitions, which no model of the run has seen.
    """
    import gymnasium as gym

    from nmbrl.agent.sac import SACAgent
    from nmbrl.agent.trained import TrainedAgent
    from nmbrl.envs.make import is_gym_id

    record = run.record
    agent = SACAgent(**{k: v for k, v in run.checkpoint["hyper_parameters"].items() if not k.startswith("_")})
    agent.on_load_checkpoint(run.checkpoint)
    agent.load_state_dict(run.checkpoint["state_dict"])
    trained = TrainedAgent(agent, record["env"], record["observation_dim"])
    rule = termination_rule(record["env"])
    gamma = float(run.checkpoint["hyper_parameters"]["gamma"])
    gymnasium = is_gym_id(record["env"])
    env = gym.make(record["env"]) if gymnasium else None
    played = []
    for i in range(episodes):
        if gymnasium:
            played.append(gymnasium_episode(env, trained, rule, seed + i))
        else:
            played.append(dm_control_episode(record["env"], record.get("action_repeat", 1), trained, rule, seed + i))
    if env is not None:
        env.close()
    q_first, mc_first, ratios = [], [], []
    for episode in played:
        rewards = episode.rewards
        # Discounted return that followed each step (cut at the time limit, so early steps only).
        to_go = np.zeros(len(rewards))
        running = 0.0
        for t in reversed(range(len(rewards))):
            running = rewards[t] + gamma * running
            to_go[t] = running
        with torch.no_grad():
            obs = torch.as_tensor(np.array(episode.observations), dtype=torch.float32)
            act = torch.as_tensor(np.array(episode.actions), dtype=torch.float32).reshape(len(rewards), -1)
            q = critic_forward(critic_layers(agent.loss_module), obs, act).min(dim=0).values.numpy()
        horizon = max(1, len(rewards) - 200) if episode.truncated else len(rewards)  # where the cut-off tail matters little
        q_first.append(float(q[:horizon].mean()))
        mc_first.append(float(to_go[:horizon].mean()))
        ratios.append(q_first[-1] / max(mc_first[-1], 1e-6))
    returns = [sum(e.rewards) for e in played]
    lengths = [len(e.rewards) for e in played]
    behaviour = f"return {np.mean(returns):.1f}, length {np.mean(lengths):.0f}"
    if gymnasium:
        behaviour += f", forward {np.mean([e.forward for e in played]):+.2f} m per episode"
    found = [
        Finding(f"policy in {record['env']} ({episodes} episodes)", behaviour, "-"),
        Finding(
            "value estimates",
            f"min-Q {np.mean(q_first):.1f} against the discounted return that followed, {np.mean(mc_first):.1f} (x{np.mean(ratios):.2f})",
            "close to x1 (the soft Q also counts the entropy bonus)",
            None,
        ),
    ]
    if rule is not None:
        disagreements, steps = sum(e.terminal_disagreements for e in played), sum(lengths)
        found.insert(
            0,
            Finding(
                "termination rule (live, float64)" if gymnasium else "termination rule (live)",
                f"{disagreements} of {steps:,} steps disagree",
                "0 disagree",
                disagreements == 0,
            ),
        )
    return found, torch.stack([t for e in played for t in e.transitions])


def transition(observation, action, reward, next_observation, terminated) -> TensorDict:
    as_float = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    return TensorDict(
        {
            "observation": as_float(observation),
            "action": as_float(action),
            "next": {
                "observation": as_float(next_observation),
                "reward": as_float([reward]),
                "terminated": torch.tensor([bool(terminated)]),
            },
        },
        batch_size=[],
    )


def check_imagined_data(run: Run) -> Finding:
    """What SAC trains on 95% of the time against what the real env gives."""
    real, model = run.buffer("real_buffer"), run.buffer("model_buffer")
    if model is None:
        return Finding("imagined against real data", "no model buffer in the checkpoint", "-")
    recent = real[-10_000:]
    share = lambda data: float(data["next", "terminated"].float().mean())  # noqa: E731
    reward = lambda data: float(data["next", "reward"].mean())  # noqa: E731
    return Finding(
        "imagined against real data",
        f"model buffer: terminal {share(model):.2%}, mean reward {reward(model):.3f}",
        f"last 10k real: terminal {share(recent):.2%}, mean reward {reward(recent):.3f}",
        None,
    )


PAPER_TARGET_ENTROPY = {"Hopper": -1.0, "Walker2d": -3.0, "HalfCheetah": -3.0, "Ant": -4.0, "Humanoid": -2.0, "InvertedPendulum": -0.05}


def diagnose(run: Run, episodes: int) -> list[Finding]:
    base = run.record["env"].split("-v")[0]
    findings = [check_termination_on_real_data(run)]
    live = None
    if episodes:
        found, live = live_episodes(run, episodes)
        findings += found
    findings += [check_rollout_schedule(run), check_real_ratio(run), check_model_buffer(run), check_imagined_data(run)]
    findings += check_holdout_and_elites(run, world_model_of(run), live)
    findings.append(check_target_entropy(run, PAPER_TARGET_ENTROPY.get(base)))
    findings += check_random_steps(run)
    return findings


def table(findings: list[Finding]) -> str:
    """A markdown table; a ``|`` inside a cell is escaped so it cannot split the cell."""
    lines = ["| check | measured | expected | ok |", "| --- | --- | --- | --- |"]
    for f in findings:
        ok = "" if f.ok is None else ("yes" if f.ok else "**no**")
        cells = (str(cell).replace("|", "\\|") for cell in (f.check, f.measured, f.expected, ok))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint of the run (runs/<experiment>/<run id>/checkpoints/last.ckpt)")
    parser.add_argument("--config", type=Path, help="the run's config (default: config.yaml in its run folder)")
    parser.add_argument("--episodes", type=int, default=3, help="live episodes of the trained policy (0: none)")
    args = parser.parse_args(argv)
    run = load_run(args.checkpoint, args.config)
    print(f"{run.record['env']}, run {run.record['run_id']}, {len(run.buffer('real_buffer')):,} real transitions\n")
    print(table(diagnose(run, args.episodes)))


if __name__ == "__main__":
    main()
