"""The one field-path walker behind overrides, their flattening into columns, and "allowed keys" in errors."""

from __future__ import annotations

import pytest

from kdray.config import RunConfig, SelectorConfig, SweepConfig
from kdray.config_paths import (
    ConfigError,
    UnknownKey,
    allowed_keys,
    apply_overrides,
    field_at,
    flatten_overrides,
)
from kdray.config_search import Distribution


def test_field_at_follows_sections_and_model_mappings() -> None:
    assert field_at(RunConfig, ["selector"]) is SelectorConfig
    assert field_at(RunConfig, ["selector", "reward", "cost"]) is float
    assert field_at(SweepConfig, ["search", "space", "train.lr"]) is Distribution  # any key of dict[str, Model]
    with pytest.raises(UnknownKey) as info:
        field_at(RunConfig, ["train", "lrate"])
    assert info.value.depth == 1 and "max_grad_norm" in info.value.allowed
    with pytest.raises(UnknownKey) as info:
        field_at(RunConfig, ["selector", "weights", "response"])  # dict[str, float]: a value, no sub-keys
    assert (info.value.depth, info.value.allowed) == (2, [])


def test_allowed_keys() -> None:
    assert "loguniform" in allowed_keys(SweepConfig, ("search", "space", "train.lr"))
    assert "tasks" in allowed_keys(SweepConfig, ())
    assert allowed_keys(SweepConfig, ("task_overrides", "rte")) == []
    assert allowed_keys(RunConfig, ("nope",)) == []


def test_apply_overrides_sets_copies_and_names_bad_paths() -> None:
    raw = {"selector": {"name": "pkd", "reward": {"cost": 0.5}}}
    out = apply_overrides(raw, {"train.lr": 1e-4, "selector": {"action": "hard", "reward": {"clip": 2.0}}},
                          RunConfig, "f.yaml")
    assert out == {"train": {"lr": 1e-4},
                   "selector": {"name": "pkd", "action": "hard", "reward": {"cost": 0.5, "clip": 2.0}}}
    assert raw == {"selector": {"name": "pkd", "reward": {"cost": 0.5}}}  # the input is left alone
    cases = {
        "train.lrate": "f.yaml: train.lrate: unknown key 'train.lrate'; allowed keys: epochs,",
        "selector.weights.response": "f.yaml: selector.weights.response: unknown key 'selector.weights.response'; "
                                     "allowed keys: (a plain value has no sub-keys)",
    }
    for key, message in cases.items():
        with pytest.raises(ConfigError) as info:
            apply_overrides({}, {key: 1}, RunConfig, "f.yaml")
        assert str(info.value).startswith(message)
    with pytest.raises(ConfigError, match=r"^f.yaml: selector: unknown key 'nam'; allowed keys: name,"):
        apply_overrides({}, {"selector": {"nam": "all"}}, RunConfig, "f.yaml")
    with pytest.raises(ConfigError, match=r"^f.yaml: selector: unknown key 'reward.cost'; allowed keys: name,"):
        apply_overrides({}, {"selector": {"reward.cost": 1}}, RunConfig, "f.yaml")  # a section's keys: its fields
    with pytest.raises(ConfigError, match=r"^f.yaml: selector.reward: unknown key 'x'; allowed keys: reward_set,"):
        apply_overrides({}, {"selector": {"reward": {"x": 1}}}, RunConfig, "f.yaml")
    with pytest.raises(ConfigError, match=r"^f.yaml: train.lr: 'train' is not a mapping"):
        apply_overrides({"train": 5}, {"train.lr": 1}, RunConfig, "f.yaml")


def test_flatten_overrides() -> None:
    flat = flatten_overrides({"selector": {"name": "fixed", "weights": {"finetune": 1.0}, "reward": {"cost": 0.1}},
                              "knowledge.pool": ["finetune"], "bogus": {"a": 1}}, RunConfig)
    assert flat == {"selector.name": "fixed", "selector.weights": {"finetune": 1.0}, "selector.reward.cost": 0.1,
                    "knowledge.pool": ["finetune"], "bogus": {"a": 1}}
