"""Reward shaping for the actor-critic selector (DESIGN.md section 1, RewardConfig).

shaped = clip(normalise(base + beta * exploration - cost_penalty)) where
  base        = (reward_set_loss_before - reward_set_loss_after) * scale
  exploration = soft: -cos(a, a_prev); hard: -(number of consecutive repeats of a)
  cost        = cost * sum_k a_k c_k / sum_k c_k   (c_k: relative compute of kind k)
Pure functions plus a Welford normaliser, so each piece is unit-tested alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdray.config import RewardConfig


def exploration_bonus_soft(action: list[float], previous: list[float] | None) -> float:
    """-cosine similarity to the previous phase's action; 0 without one (or for a zero vector)."""
    if previous is None:
        return 0.0
    dot = sum(a * b for a, b in zip(action, previous))
    na = math.sqrt(sum(a * a for a in action))
    nb = math.sqrt(sum(b * b for b in previous))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return -dot / (na * nb)


def next_repeat_count(action: list[float], previous: list[float] | None, repeats: int) -> int:
    """Consecutive repeats of the same hard action: 0 for a new action, +1 for each repeat."""
    if previous is not None and list(action) == list(previous):
        return repeats + 1
    return 0


def exploration_bonus_hard(repeats: int) -> float:
    """-count of consecutive repeats of the same action."""
    return -float(repeats)


def cost_penalty(weights: dict[str, float], kind_costs: dict[str, float], cost: float) -> float:
    """cost * selected relative compute, in [0, cost] for weights in [0, 1]."""
    total = sum(kind_costs[k] for k in weights)
    if cost == 0.0 or total <= 0.0:
        return 0.0
    return cost * sum(w * kind_costs[k] for k, w in weights.items()) / total


class RunningNorm:
    """Running mean/std (Welford) of the pre-normalisation reward."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        """Sample std; 1.0 until two values are seen (nothing to scale by yet)."""
        if self.count < 2:
            return 1.0
        return math.sqrt(self.m2 / (self.count - 1))

    def normalize(self, x: float) -> float:
        return (x - self.mean) / max(self.std, 1e-8)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


@dataclass
class ShapedReward:
    """Every component, so traces can show what the agent was rewarded for."""

    raw: float  # base loss drop times scale
    exploration: float  # unweighted bonus
    cost: float  # penalty already multiplied by RewardConfig.cost
    shaped: float  # what the critic learns from

    def as_extra(self) -> dict[str, float]:
        return {
            "reward_raw": self.raw,
            "reward_exploration": self.exploration,
            "reward_cost": self.cost,
            "reward_shaped": self.shaped,
        }


def shape_reward(
    config: RewardConfig,
    loss_before: float,
    loss_after: float,
    exploration: float,
    cost: float,
    norm: RunningNorm,
    update_norm: bool = True,
) -> ShapedReward:
    """Combine the components; ``update_norm=False`` scores without changing the normaliser (frozen agent)."""
    if math.isnan(loss_before) or math.isnan(loss_after):
        raise ValueError(
            "actor_critic needs the reward-set loss before and after every phase, got NaN; "
            "the loop must score the reward set for learning selectors"
        )
    raw = (loss_before - loss_after) * config.scale
    value = raw + config.exploration * exploration - cost
    if config.normalize:
        if update_norm:
            norm.update(value)
        value = norm.normalize(value)
    if config.clip is not None:
        value = max(-config.clip, min(config.clip, value))
    return ShapedReward(raw=raw, exploration=exploration, cost=cost, shaped=value)
