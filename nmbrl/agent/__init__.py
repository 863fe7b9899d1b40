"""The SAC agent."""

from nmbrl.agent.divergence import DivergenceGuard
from nmbrl.agent.networks import make_actor, make_critic
from nmbrl.agent.sac import SACAgent

__all__ = ["DivergenceGuard", "SACAgent", "make_actor", "make_critic"]
