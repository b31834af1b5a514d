"""Load-balancing policies: one file each behind ``Policy.select(workers, request)``."""

from __future__ import annotations

from llamagrid.gateway.policies.base import Choice, Policy, Routable, RouteRequest, least_loaded
from llamagrid.gateway.policies.least_load import LeastLoad
from llamagrid.gateway.policies.prefix_affinity import PrefixAffinity
from llamagrid.gateway.policies.round_robin import RoundRobin
from llamagrid.gateway.policies.session_affinity import SessionAffinity

__all__ = [
    "Choice",
    "Policy",
    "Routable",
    "RouteRequest",
    "create_policy",
    "least_loaded",
]


def create_policy(name: str, *, bound: float = 1.25) -> Policy:
    """A fresh policy by name (one per model: round_robin keeps its own turn)."""
    if name == "round_robin":
        return RoundRobin()
    if name == "least_load":
        return LeastLoad()
    if name == "prefix_affinity":
        return PrefixAffinity(bound)
    if name == "session_affinity":
        return SessionAffinity()
    raise ValueError(f"unknown policy {name!r}")
