"""The SAC agent."""

from nmbrl.agent.networks import make_actor, make_critic
from nmbrl.agent.sac import SACAgent

__all__ = ["SACAgent", "make_actor", "make_critic"]
