"""kdray.registry is the one source of task, knowledge-kind and selector names, and the implementations agree.

A selector implemented without a declared name and report label fails at import (``register_selector``
refuses it); a declared name without an implementation fails here.
"""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pandas as pd
import pytest

from kdray import config, registry
from kdray.glue import TASKS
from kdray.knowledge import KNOWLEDGE, Knowledge, register_knowledge
from kdray.report_labels import METHOD_ORDER, TASK_LABELS, TASK_ORDER
from kdray.selection import SELECTORS, register_selector
from kdray.selection.baselines import StaticSelector

ACTIONS = typing.get_args(config.SelectorConfig.model_fields["action"].annotation)
ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_selector_is_declared_and_every_declared_one_registered() -> None:
    assert sorted(SELECTORS) == sorted(registry.SELECTOR_NAMES)


def test_a_selector_without_a_label_cannot_register() -> None:
    with pytest.raises(ValueError, match="'oracle' is not declared in kdray.registry"):
        register_selector("oracle")(StaticSelector)
    assert "oracle" not in SELECTORS


def test_every_label_names_a_real_selector_and_is_unique() -> None:
    methods = [m.method for m in registry.METHODS]
    labels = [m.label for m in registry.METHODS]
    assert len(set(methods)) == len(methods) and len(set(labels)) == len(labels)
    assert all(labels) and "Teacher" not in labels  # the teacher row is the report's, not a selector's
    for spec in registry.METHODS:
        assert spec.selector in SELECTORS, f"{spec.method} is labelled but selector {spec.selector} does not exist"
        assert spec.action in (None, *ACTIONS)


@pytest.mark.parametrize("selector", sorted(registry.SELECTOR_NAMES))
def test_each_selector_and_action_records_one_declared_method(selector: str) -> None:
    for action in ACTIONS:
        assert registry.method_name(selector, action) in registry.METHOD_LABELS
    assert registry.method_name("actor_critic", "hard") == "actor_critic_hard"
    assert registry.method_name("actor_critic", "soft") == "actor_critic_soft"


def test_committed_methods_keep_their_labels() -> None:
    """The method values of results/*/trials.parquet stay declared, with the labels their README tables print."""
    seen = set()
    for path in ROOT.glob("results/*/trials.parquet"):
        seen |= set(pd.read_parquet(path, columns=["method"])["method"].astype(str))
    assert seen and seen <= set(registry.METHOD_LABELS)
    assert {m: registry.method_label(m) for m in sorted(seen)} == {
        "actor_critic_hard": "AC-Hard", "actor_critic_soft": "AC-Soft", "all": "All", "finetune": "Finetune",
        "pkd": "PKD", "random_hard": "Random-Hard", "random_soft": "Random-Soft", "vanilla_kd": "Vanilla KD",
        "bandit_soft": "KS-Bandit-Soft", "schedule": "Schedule", "dynamic_kd": "Dynamic-KD", "fixed": "Fixed"}
    assert METHOD_ORDER == ("teacher", "finetune", "vanilla_kd", "pkd", "all", "fixed", "schedule", "dynamic_kd",
                            "random_hard", "random_soft", "actor_critic_hard", "actor_critic_soft", "bandit_hard",
                            "bandit_soft")


def test_every_knowledge_kind_is_implemented_and_no_other() -> None:
    assert sorted(KNOWLEDGE) == sorted(registry.KNOWLEDGE_KINDS)
    with pytest.raises(ValueError, match="'telepathy' is not declared"):
        register_knowledge("telepathy")(Knowledge)


def test_config_the_data_layer_and_the_report_read_the_registry() -> None:
    assert config.KNOWLEDGE_KINDS is registry.KNOWLEDGE_KINDS
    assert config.SELECTOR_NAMES is registry.SELECTOR_NAMES
    assert config.GLUE_TASKS is registry.TASK_NAMES
    assert TASKS is registry.TASKS and TASK_ORDER == registry.TASK_NAMES
    assert TASK_LABELS == {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
                           "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}


def test_validating_a_config_imports_nothing_heavy(tmp_path) -> None:
    """Names are checked before torch or datasets load: config reads the leaf registry only."""
    space = tmp_path / "run.yaml"
    space.write_text("task: rte\nselector: {name: pkd}\nknowledge: {pool: [finetune, response]}\n")
    code = ("import sys; from kdray.config import load_run_config; load_run_config(sys.argv[1]); "
            "heavy = [m for m in ('torch', 'datasets', 'transformers', 'ray') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code, str(space)], check=True, cwd=ROOT,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
