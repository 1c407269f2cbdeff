"""The ``schedule`` selector: weights as a function of progress, validated keys, and Optuna-searchable keys."""

from __future__ import annotations

import math

import pytest

from kdray import registry
from kdray.config import (
    ConfigError,
    KindSchedule,
    RunConfig,
    ScheduleConfig,
    SelectorConfig,
    load_sweep_config,
    validate,
)
from kdray.config_paths import apply_overrides, flatten_overrides
from kdray.selection import PhaseOutcome, PhaseState, build_selector
from kdray.selection.schedule import ScheduleSelector, schedule_weight

POOL = ["finetune", "response", "feature"]


def at(progress: float) -> PhaseState:
    return PhaseState(None, None, {}, progress, int(progress * 100))


def test_sigmoid_hits_start_and_end_and_switches_at_mid() -> None:
    spec = KindSchedule(start=1.0, end=0.2, mid=0.3, sharpness=20.0)
    assert schedule_weight(spec, 0.0) == pytest.approx(1.0)
    assert schedule_weight(spec, 1.0) == pytest.approx(0.2)
    assert schedule_weight(spec, 0.15) > 0.9 and schedule_weight(spec, 0.5) < 0.3
    values = [schedule_weight(spec, p / 20) for p in range(21)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))  # monotone from start to end
    step = KindSchedule(start=0.0, end=1.0, mid=0.5, sharpness=1e4)  # a two-piece schedule
    assert schedule_weight(step, 0.49) == pytest.approx(0.0, abs=1e-9) and schedule_weight(step, 0.51) == pytest.approx(1.0)
    assert math.isfinite(schedule_weight(step, 0.0)) and schedule_weight(KindSchedule(), 0.7) == 1.0


def test_piecewise_linear_knots() -> None:
    spec = KindSchedule(knots=[(0.2, 0.0), (0.6, 1.0), (1.0, 0.5)])
    assert schedule_weight(spec, 0.0) == 0.0 and schedule_weight(spec, 0.2) == 0.0  # flat before the first knot
    assert schedule_weight(spec, 0.4) == pytest.approx(0.5)
    assert schedule_weight(spec, 0.8) == pytest.approx(0.75)
    assert schedule_weight(spec, 1.0) == pytest.approx(0.5)


def test_selector_follows_progress_and_keeps_defaults_for_unscheduled_kinds() -> None:
    cfg = SelectorConfig(name="schedule", schedule={"response": {"start": 0.0, "end": 1.0, "sharpness": 1e4},
                                                    "feature": {"knots": [[0.0, 1.0], [1.0, 0.0]]}})
    sel = build_selector(cfg, POOL, seed=0)
    assert isinstance(sel, ScheduleSelector) and not sel.learns and not sel.needs_state
    early, late = sel.decide(at(0.1)), sel.decide(at(0.9))
    assert early["finetune"] == late["finetune"] == 1.0  # not in the schedule: weight 1
    assert early["response"] == pytest.approx(0.0, abs=1e-9) and late["response"] == pytest.approx(1.0)
    assert early["feature"] == pytest.approx(0.9) and late["feature"] == pytest.approx(0.1)
    assert sel.observe(PhaseOutcome(1.0, 0.9, {}, at(1.0), True)).weights == late


def test_all_zero_falls_back_and_unknown_pool_kinds_are_refused() -> None:
    off = {"knots": [[0.0, 0.0], [1.0, 0.0]]}
    sel = build_selector(SelectorConfig(name="schedule", schedule={"response": off, "feature": off}),
                         ["response", "feature"], seed=0)
    assert sel.decide(at(0.5)) == {"response": 1.0, "feature": 0.0}
    with pytest.raises(ValueError, match=r"sets \['attention'\].*not in the knowledge pool"):
        build_selector(SelectorConfig(name="schedule", schedule={"attention": {"end": 0.0}}), POOL, seed=0)


@pytest.mark.parametrize("raw, message", [
    ({"respons": {"end": 0.0}}, "selector.schedule.respons: unknown key; allowed keys: finetune, response, feature"),
    ({"response": {"ends": 0.0}}, "selector.schedule.response.ends: unknown key; allowed keys: start, end, mid"),
    ({"response": {"end": -1.0}}, "selector.schedule.response.end: Input should be greater than or equal to 0"),
    ({"response": {"mid": 1.5}}, "selector.schedule.response.mid: Input should be less than or equal to 1"),
    ({"response": {"end": 0.5, "knots": [[0, 1], [1, 0]]}}, "give knots or start/end/mid/sharpness, not both"),
    ({"response": {"knots": [[0.5, 1], [0.2, 0]]}}, "strictly increasing"),
])
def test_schedule_keys_are_validated_with_the_key_path(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(RunConfig, {"selector": {"name": "schedule", "schedule": raw}}, "run.yaml")
    assert message in str(err.value) and str(err.value).startswith("run.yaml: selector.schedule")


def test_every_knowledge_kind_has_a_schedule_key() -> None:
    assert tuple(ScheduleConfig.model_fields) == registry.KNOWLEDGE_KINDS


def test_dotted_keys_reach_the_schedule(tmp_path) -> None:
    """What Optuna samples (``selector.schedule.response.end``) is a dotted override the config machinery applies."""
    run = apply_overrides({"selector": {"name": "schedule"}},
                          {"selector.schedule.response.end": 0.25, "selector.schedule.feature.mid": 0.7}, RunConfig,
                          "space")
    cfg = validate(RunConfig, run)
    assert cfg.selector.schedule.response.end == 0.25 and cfg.selector.schedule.feature.mid == 0.7
    assert validate(RunConfig, cfg.model_dump()) == cfg  # the config round-trips through its dict form
    assert flatten_overrides({"selector": {"schedule": {"response": {"end": 0.25}}}}, RunConfig) == {
        "selector.schedule.response.end": 0.25}
    with pytest.raises(ConfigError, match="unknown key 'selector.schedule.respons'; allowed keys: finetune"):
        apply_overrides({}, {"selector.schedule.respons.end": 0.1}, RunConfig)
    space = tmp_path / "space.yaml"
    space.write_text("tasks: [rte]\nselector: {name: schedule}\nknowledge: {pool: [finetune, response]}\n"
                     "search:\n  mode: optuna\n  space:\n    selector.schedule.response.end: {uniform: [0, 1]}\n"
                     "    selector.schedule.response.mid: {uniform: [0.1, 0.9]}\n")
    sweep = load_sweep_config(space)
    assert set(sweep.search.space) == {"selector.schedule.response.end", "selector.schedule.response.mid"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(space.read_text().replace("{uniform: [0, 1]}", "{uniform: [-1, 1]}"))
    with pytest.raises(ConfigError, match=r"selector.schedule.response.end=-1.*greater than or equal to 0"):
        load_sweep_config(bad)


def test_registered_with_its_label() -> None:
    assert registry.method_name("schedule", "soft") == "schedule"
    assert registry.method_label("schedule") == "Schedule" and "schedule" in registry.VARYING_METHODS
