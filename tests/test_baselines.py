"""Each baseline selector returns its documented weights."""

from __future__ import annotations

import pytest
import torch

from kdray.config import SelectorConfig
from kdray.selection import PhaseOutcome, PhaseState, build_selector

POOL = ["finetune", "response", "feature", "relation"]
STATE = PhaseState(teacher_cls=None, student_cls=None, losses={}, progress=0.0, step=0)


def decide(name: str, pool: list[str] = POOL, **kw) -> tuple[object, dict[str, float]]:
    sel = build_selector(SelectorConfig(name=name, **kw), pool, seed=3)
    return sel, sel.decide(STATE)


def test_static_baselines_weights() -> None:
    assert decide("finetune")[1] == {"finetune": 1.0}
    assert decide("vanilla_kd")[1] == {"finetune": 1.0, "response": 1.0}
    sel, w = decide("pkd", pool=["finetune", "response"], pkd_beta=1.0)  # its own kind set, not the pool
    assert w == {"finetune": 1.0, "response": 1.0, "feature": 1.0}
    assert sel.feature_mode == "pkd" and sel.pool == ["finetune", "response", "feature"]
    assert decide("all")[1] == {k: 1.0 for k in POOL}
    assert decide("fixed", weights={"response": 0.5, "finetune": 2.0})[1] == {
        "finetune": 2.0, "response": 0.5, "feature": 0.0, "relation": 0.0
    }
    assert not decide("finetune")[0].needs_state and not decide("all")[0].learns


def test_random_hard_is_binary_varies_and_never_empty() -> None:
    sel = build_selector(SelectorConfig(name="random_hard"), ["response", "feature"], seed=0)
    seen = set()
    for _ in range(60):
        w = sel.decide(STATE)
        assert set(w.values()) <= {0.0, 1.0} and sum(w.values()) >= 1
        seen.add(tuple(w.values()))
    assert seen == {(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)}  # (0, 0) falls back to the first kind -> (1, 0)
    sel = build_selector(SelectorConfig(name="random_hard"), POOL, seed=0)
    for _ in range(60):
        w = sel.decide(STATE)
        if sum(w.values()) == 1 and w["finetune"] == 1:
            break
    else:
        pytest.fail("never fell back / selected finetune alone")


def test_random_soft_uniform_and_resumable() -> None:
    sel = build_selector(SelectorConfig(name="random_soft"), POOL, seed=7)
    first = [sel.decide(STATE) for _ in range(3)]
    vals = [v for w in first for v in w.values()]
    assert all(0.0 <= v <= 1.0 for v in vals) and len(set(vals)) == len(vals)
    state = sel.state_dict()
    nxt = sel.decide(STATE)
    again = build_selector(SelectorConfig(name="random_soft"), POOL, seed=99)
    again.load_state_dict(state)
    assert again.decide(STATE) == nxt


def test_observe_records_the_weights() -> None:
    sel, w = decide("vanilla_kd")
    rec = sel.observe(PhaseOutcome(1.0, 0.5, {"finetune": 0.7}, STATE, False))
    assert rec.weights == w and rec.reward_set_loss == 0.5 and rec.phase == 0 and sel.phase == 1


def test_init_from_restores_a_baselines_whole_state(tmp_path) -> None:
    """A selector without networks starts from the whole saved state (phase, generator, last weights)."""
    sel = build_selector(SelectorConfig(name="random_soft"), POOL, seed=7)
    for _ in range(3):
        sel.decide(STATE)
    path = tmp_path / "selector.pt"
    torch.save(sel.state_dict(), path)
    nxt = sel.decide(STATE)
    again = build_selector(SelectorConfig(name="random_soft", init_from=str(path)), POOL, seed=99)
    assert again.decide(STATE) == nxt


def test_pkd_weights_the_patient_loss_by_beta_with_pkds_default() -> None:
    """PKD's beta multiplies the patient (feature) loss: 100 by default, as in PKD's reference code."""
    assert SelectorConfig().pkd_beta == 100.0
    assert decide("pkd")[1] == {"finetune": 1.0, "response": 1.0, "feature": 100.0}
    assert decide("pkd", pkd_beta=500.0)[1]["feature"] == 500.0
    with pytest.raises(ValueError, match="pkd_beta"):
        SelectorConfig(name="pkd", pkd_beta=0.0)
