"""Knowledge selectors by name: the interface, the baselines, the heuristics and the actor-critic agent.

Importing this package registers every implementation in :data:`SELECTORS` (their names and report
labels are declared in :mod:`kdray.registry`); :func:`build_selector` is how the loop gets one.
"""

from kdray.selection import actor_critic, bandit, baselines, dynamic_kd, schedule  # noqa: F401  (registers)
from kdray.selection.base import (
    SELECTORS,
    PhaseOutcome,
    PhaseRecord,
    PhaseState,
    Selector,
    build_selector,
    fallback_kind,
    read_state,
    register_selector,
)

__all__ = [
    "SELECTORS",
    "PhaseOutcome",
    "PhaseRecord",
    "PhaseState",
    "Selector",
    "build_selector",
    "fallback_kind",
    "read_state",
    "register_selector",
]
