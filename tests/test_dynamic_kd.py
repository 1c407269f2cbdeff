"""The Dynamic-KD heuristic: Li et al.'s uncertainty weighting per phase, and its documented fallback."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from kdray import registry
from kdray.config import ConfigError, RunConfig, SelectorConfig, validate
from kdray.selection import PhaseOutcome, PhaseState, build_selector
from kdray.selection.dynamic_kd import DynamicKDSelector, disagreement, dynamic_weights, student_uncertainty

POOL = ["finetune", "response", "feature", "relation"]


def state(student: torch.Tensor | None = None, teacher: torch.Tensor | None = None) -> PhaseState:
    return PhaseState(None, None, {}, 0.5, 10, student_logits=student, teacher_logits=teacher)


def test_uncertainty_is_normalised_entropy() -> None:
    assert student_uncertainty(torch.zeros(4, 3)) == pytest.approx(1.0)  # uniform over 3 classes
    assert student_uncertainty(torch.tensor([[50.0, 0.0], [0.0, 50.0]])) == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([0.9, 0.1])
    h = float(-(p * p.log()).sum() / math.log(2))
    assert student_uncertainty(p.log()[None].repeat(5, 1)) == pytest.approx(h, rel=1e-5)
    assert student_uncertainty(torch.zeros(4, 1)) is None and student_uncertainty(None) is None  # regression


def test_disagreement_counts_differing_predictions() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    assert disagreement(s, t) == pytest.approx(0.5)
    assert disagreement(s, None) is None


def test_weights_follow_li_et_al() -> None:
    w = dynamic_weights(POOL, 0.3)
    assert w == pytest.approx({"finetune": 1.0, "response": 0.7, "feature": 0.3, "relation": 0.3})
    r = dynamic_weights(POOL, 0.3, reverse=True)
    assert r == pytest.approx({"finetune": 1.0, "response": 0.3, "feature": 0.7, "relation": 0.7})
    assert dynamic_weights(["response"], 1.0) == {"response": 1.0}  # all-zero: the pool's first kind


def test_selector_weights_move_with_the_students_uncertainty() -> None:
    sel = build_selector(SelectorConfig(name="dynamic_kd"), POOL, seed=0)
    assert isinstance(sel, DynamicKDSelector) and sel.needs_state and sel.needs_logits and not sel.learns
    confident = sel.decide(state(torch.tensor([[8.0, -8.0]] * 4)))
    unsure = sel.decide(state(torch.tensor([[0.1, 0.0]] * 4)))
    assert confident["response"] > 0.99 and confident["feature"] < 0.01
    assert unsure["response"] < 0.01 and unsure["feature"] > 0.99
    record = sel.observe(PhaseOutcome(1.0, 0.9, {}, state(), False))
    assert record.weights == unsure and record.extra["dynamic_kd_fallback"] == 0.0
    agree = build_selector(SelectorConfig(name="dynamic_kd", dynamic_kd={"signal": "disagreement"}), POOL, seed=0)
    s = torch.tensor([[1.0, 0.0]] * 4)
    w = agree.decide(state(s, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])))
    assert w["response"] == pytest.approx(0.5) and w["feature"] == pytest.approx(0.5)


def test_without_logits_it_falls_back_and_says_so() -> None:
    sel = build_selector(SelectorConfig(name="dynamic_kd", dynamic_kd={"fallback": 0.2}), POOL, seed=0)
    with pytest.warns(UserWarning, match="no entropy signal.*fallback=0.2"):
        w = sel.decide(state())
    assert w == pytest.approx({"finetune": 1.0, "response": 0.8, "feature": 0.2, "relation": 0.2})
    assert sel.observe(PhaseOutcome(1.0, 0.9, {}, state(), False)).extra["dynamic_kd_fallback"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per selector, not every phase
        regression = sel.decide(state(torch.randn(4, 1)))  # STS-B: entropy undefined
    assert regression == w


def test_config_and_registry() -> None:
    with pytest.raises(ConfigError, match="selector.dynamic_kd.signal: Input should be 'entropy' or 'disagreement'"):
        validate(RunConfig, {"selector": {"name": "dynamic_kd", "dynamic_kd": {"signal": "margin"}}})
    assert registry.method_name("dynamic_kd", "hard") == "dynamic_kd"
    assert registry.method_label("dynamic_kd") == "Dynamic-KD"
