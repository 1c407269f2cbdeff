"""Reward shaping for the actor-critic selector (DESIGN.md section 1, RewardConfig).

A phase's reward is built from three raw components, which the replay buffer stores as they are:
  drop        = (reward_set_loss_before - reward_set_loss_after) * scale * phase_steps / steps
                (a partial last phase of ``steps`` < ``phase_steps`` is scaled up to a full phase's drop)
  exploration = soft: -cos(a, a_prev) (absent, NaN, without a previous action); hard: -(consecutive repeats)
  cost        = cost * sum_k a_k c_k / sum_k c_k   (c_k: relative compute of kind k)
and composed (:func:`compose`) with the statistics of the moment, at decision time for the trace and again
at sampling time for the critic, so stored transitions follow the statistics as they move:
  term   = beta * exploration                                 (exploration_scale: raw, the paper's form)
         = beta * std(drop) * (exploration - mean(e)) / std(e) (exploration_scale: spread, the default)
  value  = drop + term - cost
  shaped = clip((value - mean(drop)) / std(drop))  when normalize, else clip(value)

Why ``spread``: -cos(a, a_prev) of positive weights lives in about [-1, -0.8], so a raw beta of 0.01 moved
the reward by about 2% of its spread. Standardising the term by its own running statistics and scaling it by
the loss drop's std makes beta the exploration term's share of the reward's spread (beta = 0.1: a tenth).
Why the drop's statistics normalise: the drop carries the signal, and the statistics used for a phase are
those from *before* its own drop, only once ``normalize_warmup`` drops are seen (before that the shaped
reward is NaN and the selector does not learn); updating first made every run's first reward exactly 0 and
its second exactly +-0.707.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from kdray.config import RewardConfig

_EPS = 1e-8


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
    """Running mean/std (Welford) of one reward component."""

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
        return (x - self.mean) / max(self.std, _EPS)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


def phase_drop(config: RewardConfig, before: float, after: float, steps: int | None, phase_steps: int) -> float:
    """The reward-set loss drop of a phase, scaled to a full phase when it ran ``steps`` < ``phase_steps``."""
    if math.isnan(before) or math.isnan(after):
        raise ValueError(
            "actor_critic needs the reward-set loss before and after every phase, got NaN; "
            "the loop must score the reward set for learning selectors"
        )
    full = 1.0 if steps is None or steps <= 0 else phase_steps / steps
    return (before - after) * config.scale * full


def compose(
    config: RewardConfig,
    drop: torch.Tensor,
    exploration: torch.Tensor,
    cost: torch.Tensor,
    norm: RunningNorm,
    explore_norm: RunningNorm | None = None,
) -> torch.Tensor:
    """The shaped reward of raw components (any shape; NaN exploration = absent) under the given statistics.

    NaN where ``normalize`` is on and the drop statistics have fewer than ``normalize_warmup`` values.
    """
    explore = torch.nan_to_num(exploration, nan=0.0)
    if config.exploration == 0.0:
        term = torch.zeros_like(drop)
    elif config.exploration_scale == "raw":
        term = config.exploration * explore
    elif explore_norm is None or explore_norm.count < 2 or explore_norm.std < _EPS or norm.count < 2:
        term = torch.zeros_like(drop)  # no spread measured yet: nothing to scale by
    else:
        z = torch.where(torch.isnan(exploration), torch.zeros_like(drop), (explore - explore_norm.mean) / explore_norm.std)
        term = config.exploration * norm.std * z
    value = drop + term - cost
    if config.normalize:
        if norm.count < config.normalize_warmup:
            return torch.full_like(value, math.nan)
        value = (value - norm.mean) / max(norm.std, _EPS)
    if config.clip is not None:
        value = value.clamp(-config.clip, config.clip)
    return value


@dataclass
class ShapedReward:
    """Every component, so traces can show what the agent was rewarded for."""

    raw: float  # the phase's loss drop times scale (scaled to a full phase)
    exploration: float  # unweighted bonus (0 when absent)
    cost: float  # penalty already multiplied by RewardConfig.cost
    shaped: float  # the composed reward under the statistics from before this phase (NaN in the warm-up)

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
    explore_norm: RunningNorm | None = None,
    steps: int | None = None,
    phase_steps: int = 1,
) -> ShapedReward:
    """Compose this phase's reward with the statistics from before it, then (``update_norm``) add its drop and
    exploration to them; ``update_norm=False`` scores without changing them (a frozen agent)."""
    drop = phase_drop(config, loss_before, loss_after, steps, phase_steps)
    as_tensor = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    shaped = float(compose(config, as_tensor(drop), as_tensor(exploration), as_tensor(cost), norm, explore_norm)[0])
    if update_norm:
        norm.update(drop)
        if explore_norm is not None and not math.isnan(exploration):
            explore_norm.update(exploration)
    shown = 0.0 if math.isnan(exploration) else exploration
    return ShapedReward(raw=drop, exploration=shown, cost=cost, shaped=shaped)
