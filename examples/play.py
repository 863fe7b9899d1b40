"""One episode of a trained agent in its gymnasium env, outside the CLI.

    python examples/play.py runs/<experiment id>/<run id> --seed 10000

The seed is the episode's reset seed: episode i of `cli.py test` uses 10000 + seed_everything + i,
so this prints the same return as that row of its table.
"""

import argparse

import gymnasium as gym

from nmbrl import ConfigError, load_agent

parser = argparse.ArgumentParser(description="Play one episode of a trained agent.")
parser.add_argument("source", help="a checkpoint file, a run folder, or an MLflow run id")
parser.add_argument("--seed", type=int, default=10_000, help="reset seed of the episode")
parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db", help="MLflow store, for a run id")
args = parser.parse_args()

try:
    agent = load_agent(args.source, tracking_uri=args.tracking_uri)
    env = gym.make(agent.env_name)
    agent.check_env(env)
except (ConfigError, gym.error.Error) as error:
    raise SystemExit(f"error: {error}") from None

observation, _ = env.reset(seed=args.seed)
episode_return, done = 0.0, False
while not done:
    observation, reward, terminated, truncated, _ = env.step(agent.act(observation))
    episode_return += float(reward)
    done = terminated or truncated
print(f"return {episode_return:.2f}")
