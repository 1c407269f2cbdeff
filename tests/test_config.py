"""Malformed search-space files: each fails with one message naming the file, the key path and what is allowed,
before anything (Ray included) starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from kdray.config import ConfigError, load_sweep_config
from kdray.sweep import run_sweep

GOOD = (Path(__file__).resolve().parent / "spaces" / "good.yaml").read_text()  # a small valid space

# (yaml text, fragments every one of which must appear in the message)
CASES = {
    "unknown_top_key": (GOOD + "bogus: 1\n", ["bogus", "unknown key", "allowed keys", "tasks", "search"]),
    "unknown_nested_key": (GOOD + "data: {sorce: local}\n", ["data.sorce", "unknown key", "max_train_samples"]),
    "wrong_type": ("train: {batch_size: big}\n", ["train.batch_size", "integer"]),
    "unknown_kind": ("knowledge: {pool: [finetune, telepathy]}\n", ["knowledge.pool", "telepathy", "relation", "attention"]),
    "unknown_selector": ("selector: {name: oracle}\n", ["selector.name", "oracle", "actor_critic", "random_soft"]),
    "unknown_task": ("tasks: [rte, squad]\n", ["tasks", "squad", "mnli", "wnli"]),
    "empty_pool": ("knowledge: {pool: []}\n", ["knowledge.pool", "at least 1"]),
    "two_dist_keys": ("search: {space: {train.lr: {uniform: [0.1, 0.2], choice: [1]}}}\n",
                      ["search.space.train.lr", "exactly one of choice, grid, uniform, loguniform, int"]),
    "low_above_high": ("search: {space: {train.lr: {uniform: [0.2, 0.1]}}}\n", ["search.space.train.lr", "low < high"]),
    "loguniform_nonpositive": ("search: {space: {train.lr: {loguniform: [0.0, 0.1]}}}\n",
                               ["search.space.train.lr", "loguniform needs low > 0"]),
    "unknown_dist": ("search: {space: {train.lr: {normal: [0, 1]}}}\n", ["search.space.train.lr.normal", "unknown key", "loguniform"]),
    "dotted_key_missing": ("search: {space: {train.lrate: {choice: [1.0e-4]}}}\n", ["train.lrate", "unknown key", "max_grad_norm"]),
    "dotted_key_top_missing": ("search: {space: {optimizer.lr: {choice: [1.0e-4]}}}\n", ["optimizer.lr", "allowed keys", "selector"]),
    "searched_value_invalid": ("search: {space: {selector.name: {choice: [pkd, oracle]}}}\n",
                               ["search.space.selector.name='oracle'", "selector.name", "actor_critic"]),
    "searched_kind_invalid": ("search: {space: {knowledge.pool: {choice: [[finetune], [finetune, magic]]}}}\n",
                              ["search.space.knowledge.pool", "magic", "relation"]),
    "task_not_searchable": ("search: {space: {task: {choice: [rte]}}}\n", ["search.space.task", "not searchable", "tasks"]),
    "fixed_without_weights": ("selector: {name: fixed}\n", ["selector.name=fixed needs selector.weights"]),
    "bad_search_mode": ("search: {mode: random}\n", ["search.mode", "grid", "optuna"]),
    "bad_scheduler": ("search: {scheduler: {type: pbt}}\n", ["search.scheduler.type", "none", "asha"]),
    "bad_name": ("name: 'a b/c'\n", ["name", "pattern"]),
    "yaml_syntax": ("tasks: [rte\n", ["not valid YAML", "line"]),
    "empty_file": ("", ["file is empty"]),
    "comments_only": ("# nothing here\n", ["file is empty"]),
    "top_level_list": ("- rte\n- mrpc\n", ["expected a mapping", "list"]),
    "top_level_scalar": ("just words\n", ["expected a mapping", "str"]),
    "task_override_unlisted_task": ("tasks: [rte]\ntask_overrides: {sst2: {train.max_seq_length: 64}}\n",
                                    ["task_overrides.sst2", "not one of this sweep's tasks", "rte"]),
    "task_override_unknown_key": ("tasks: [rte]\ntask_overrides: {rte: {train.max_len: 64}}\n",
                                  ["task_overrides.rte", "train.max_len", "unknown key", "max_seq_length"]),
    "task_override_bad_value": ("tasks: [rte]\ntask_overrides: {rte: {train.max_seq_length: 4}}\n",
                                ["task rte", "train.max_seq_length", "greater than or equal to 8"]),
    "grid_section_unknown_key": ("search: {space: {selector: {grid: [{name: pkd}, {nam: all}]}}}\n",
                                 ["search.space", "selector", "unknown key 'nam'", "phase_steps"]),
    "resources_negative": ("resources: {cpus_per_worker: 0}\n", ["resources.cpus_per_worker", "greater than 0"]),
    "attention_cache_negative": ("train: {teacher_cache_attention_gib: -1}\n",
                                 ["train.teacher_cache_attention_gib", "greater than or equal to 0"]),
}


@pytest.fixture(autouse=True)
def _no_ray() -> None:
    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized(), "a malformed config must fail before Ray starts"


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_space_names_file_key_and_allowed(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text, fragments = CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_sweep_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"
    assert "Traceback" not in message and "pydantic" not in message.lower()
    # The CLI path: one error line (per bad key) on stderr, exit code 2, nothing started.
    assert run_sweep(str(path), dry_run=False) == 2
    err = capsys.readouterr().err
    assert str(path) in err and fragments[0] in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        load_sweep_config(path)
    assert run_sweep(str(path)) == 2
    assert "no such file" in capsys.readouterr().err
