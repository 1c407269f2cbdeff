"""The actor-critic's reward defects of issue #15 stay fixed.

- replay holds raw components and the critic's targets follow the statistics at sampling time;
- the soft exploration term is scaled to the loss drop's spread (beta is a share of it);
- a partial last phase is scaled to a full phase's drop;
- the agent learns only after the normaliser's warm-up.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdray.config import RewardConfig, SelectorConfig
from kdray.selection import PhaseOutcome, PhaseState
from kdray.selection.actor_critic import ActorCriticSelector
from kdray.selection.reward import RunningNorm, compose, exploration_bonus_soft, shape_reward

POOL = ["finetune", "response", "feature", "relation"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def state(i: int) -> PhaseState:
    gen = torch.Generator().manual_seed(i)
    return PhaseState(torch.randn(4, 8, generator=gen), torch.randn(4, 6, generator=gen), {}, i / 20, i)


def run(selector: ActorCriticSelector, drops: list[float], steps: list[int | None] | None = None) -> list:
    records = []
    for i, drop in enumerate(drops):
        selector.decide(state(i))
        n = steps[i] if steps else None
        records.append(selector.observe(PhaseOutcome(1.0, 1.0 - drop, {}, state(i + 1), False, steps=n)))
    return records


def test_replay_stores_raw_components_and_targets_use_current_statistics() -> None:
    cfg = SelectorConfig(reward=RewardConfig(exploration=0.5, cost=0.2, clip=None), hidden_size=8)
    selector = ActorCriticSelector(POOL, cfg, seed=0)
    drops = [0.01, -0.02, 0.03, 0.005, 0.02, -0.01]
    records = run(selector, drops)
    data, n = selector.replay.data, len(drops)
    assert torch.allclose(data["drop"][:n].double(), torch.tensor(drops, dtype=torch.float64), atol=1e-7)
    assert math.isnan(float(data["exploration"][0]))  # first soft action: nothing to compare with
    assert torch.allclose(data["exploration"][1:n], torch.tensor([r.extra["reward_exploration"] for r in records[1:]]))
    assert torch.allclose(data["cost"][:n], torch.tensor([r.extra["reward_cost"] for r in records]))
    # the record's reward used the statistics before its phase; a target uses today's, so they differ
    now = compose(cfg.reward, data["drop"][:n], data["exploration"][:n], data["cost"][:n], selector.norm,
                  selector.explore_norm)
    assert math.isfinite(records[-1].reward) and float(now[-1]) != pytest.approx(records[-1].reward, abs=1e-4)
    stats = RunningNorm()
    for d in drops:
        stats.update(d)
    assert selector.norm.mean == pytest.approx(stats.mean) and selector.norm.std == pytest.approx(stats.std)
    expected_first = (drops[0] - stats.mean - float(data["cost"][0])) / stats.std  # no exploration term
    assert float(now[0]) == pytest.approx(expected_first, rel=1e-5)


def test_soft_exploration_is_scaled_to_the_reward_spread() -> None:
    """Raw -cos of positive weights is mostly an offset; spread-scaled, beta is the term's share of the drop's std."""
    gen = torch.Generator().manual_seed(0)
    actions = (0.5 + 0.3 * torch.randn(200, 4, generator=gen)).clamp(0.01, 1.0).tolist()  # an early soft policy
    bonus = torch.tensor([exploration_bonus_soft(a, b) for a, b in zip(actions[1:], actions[:-1])])
    assert bonus.max() < 0
    drops = torch.randn(199, generator=gen, dtype=torch.float64) * 0.02
    norm, explore_norm = RunningNorm(), RunningNorm()
    for d, e in zip(drops.tolist(), bonus.tolist()):
        norm.update(d)
        explore_norm.update(e)
    beta = 0.25
    for normalize in (False, True):
        cfg = RewardConfig(exploration=beta, normalize=normalize, clip=None)
        zero = RewardConfig(exploration=0.0, normalize=normalize, clip=None)
        with_term = compose(cfg, drops, bonus.double(), torch.zeros_like(drops), norm, explore_norm)
        without = compose(zero, drops, bonus.double(), torch.zeros_like(drops), norm, explore_norm)
        scale = 1.0 if normalize else norm.std  # normalised rewards are in units of the drop's std
        assert float((with_term - without).std()) == pytest.approx(beta * scale, rel=1e-6)
        assert float((with_term - without).mean()) == pytest.approx(0.0, abs=1e-9)
    raw = RewardConfig(exploration=beta, normalize=False, clip=None, exploration_scale="raw")
    raw_term = compose(raw, drops, bonus.double(), torch.zeros_like(drops), norm, explore_norm) - drops
    assert torch.allclose(raw_term, beta * bonus.double())  # the paper's form stays available
    assert float(raw_term.std()) < 0.5 * float(raw_term.mean().abs())  # mostly a constant offset, little spread


def test_partial_phase_is_scaled_to_a_full_phase() -> None:
    cfg = RewardConfig(normalize=False, clip=None)
    full = shape_reward(cfg, 1.0, 0.9, 0.0, 0.0, RunningNorm(), steps=None, phase_steps=50)
    half = shape_reward(cfg, 1.0, 0.95, 0.0, 0.0, RunningNorm(), steps=25, phase_steps=50)
    same = shape_reward(cfg, 1.0, 0.9, 0.0, 0.0, RunningNorm(), steps=50, phase_steps=50)
    assert full.raw == pytest.approx(0.1) and half.raw == pytest.approx(0.1) and same.raw == pytest.approx(0.1)
    selector = ActorCriticSelector(POOL, SelectorConfig(phase_steps=10, hidden_size=8), seed=0)
    records = run(selector, [0.01, 0.01, 0.01], steps=[10, None, 4])
    assert [r.extra["reward_raw"] for r in records] == pytest.approx([0.01, 0.01, 0.025])
    assert float(selector.replay.data["drop"][2]) == pytest.approx(0.025)


def test_learning_starts_after_the_normaliser_warm_up() -> None:
    cfg = SelectorConfig(reward=RewardConfig(normalize_warmup=3), hidden_size=8)
    selector = ActorCriticSelector(POOL, cfg, seed=0)
    records = run(selector, [0.01, 0.02])
    before = [p.clone() for p in selector.critic.parameters()]
    assert all(math.isnan(r.reward) for r in records) and "critic_loss" not in records[-1].extra
    records += run(selector, [0.03])  # third drop seen: the warm-up is complete, the critic learns
    assert "critic_loss" in records[-1].extra and math.isfinite(records[-1].extra["critic_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, selector.critic.parameters()))
    assert math.isnan(records[-1].reward)  # its own reward still used the two-value statistics
    records += run(selector, [0.0])
    assert math.isfinite(records[-1].reward)
    no_norm = ActorCriticSelector(POOL, SelectorConfig(reward=RewardConfig(normalize=False), hidden_size=8), seed=0)
    first = run(no_norm, [0.01])[0]
    assert math.isfinite(first.reward) and "critic_loss" in first.extra  # nothing to warm up


def test_a_checkpoint_without_raw_replay_is_refused() -> None:
    selector = ActorCriticSelector(POOL, SelectorConfig(hidden_size=8), seed=0)
    run(selector, [0.01, 0.02])
    saved = selector.state_dict()
    old = dict(saved, replay={k if k != "drop" else "reward": v for k, v in saved["replay"].items()})
    old.pop("explore_norm")
    with pytest.raises(ValueError, match="earlier kdray"):
        ActorCriticSelector(POOL, SelectorConfig(hidden_size=8), seed=1).load_state_dict(old)
