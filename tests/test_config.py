"""Malformed search-space files: each fails with one message naming the file, the key path and what is allowed,
before anything (Ray included) starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from kdray.config import ConfigError, load_sweep_config
from kdray.sweep import expand_grid, run_sweep

GOOD = """\
name: t
tasks: [rte]
teacher: {model: tiny-bert}
student: {layers: 2}
train: {max_steps: 2, seeds: [1, 2]}
selector: {name: vanilla_kd}
knowledge: {pool: [finetune, response]}
"""

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


def test_good_file_loads_and_grid_expands(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD + "search:\n  space:\n    selector.phase_steps: {grid: [5, 10]}\n"
                    "    knowledge.pool: {choice: [[finetune, response], [finetune]]}\n")
    sweep = load_sweep_config(path)
    trials = expand_grid(sweep)
    # 2 phase_steps x 2 pools x 1 task x 2 seeds
    assert len(trials) == 8
    assert len({t["trial_key"] for t in trials}) == 8
    assert {t["run"]["train"]["seed"] for t in trials} == {1, 2}
    assert {t["run"]["selector"]["phase_steps"] for t in trials} == {5, 10}
    assert all(t["run"]["task"] == "rte" for t in trials)


def test_grid_rejects_continuous_distribution(tmp_path: Path) -> None:
    path = tmp_path / "cont.yaml"
    path.write_text(GOOD + "search: {mode: grid, space: {train.lr: {uniform: [1.0e-5, 1.0e-4]}}}\n")
    with pytest.raises(ConfigError, match=r"cont.yaml: search.space.train.lr: .*grid.*optuna"):
        expand_grid(load_sweep_config(path), str(path))
    assert run_sweep(str(path), dry_run=True) == 2


def test_section_mappings_in_grid_and_task_overrides(tmp_path: Path) -> None:
    """A grid over whole-section mappings sets only the named keys; task_overrides apply per task."""
    path = tmp_path / "methods.yaml"
    path.write_text(GOOD.replace("tasks: [rte]", "tasks: [rte, sst2]")
                    + "task_overrides: {sst2: {train.max_seq_length: 64, data.max_train_samples: 100}}\n"
                    + "search:\n  space:\n    selector: {grid: [{name: pkd}, {name: actor_critic, action: hard}]}\n")
    trials = expand_grid(load_sweep_config(path), str(path))
    assert len(trials) == 2 * 2 * 2  # methods x tasks x seeds
    by = {(t["task"], t["run"]["selector"]["name"]): t for t in trials if t["seed"] == 1}
    ac = by[("rte", "actor_critic")]
    assert ac["params"] == {"selector.name": "actor_critic", "selector.action": "hard"}  # one column per key
    assert ac["run"]["selector"]["action"] == "hard"
    assert ac["run"]["selector"]["phase_steps"] == 50  # the section's other settings are kept
    assert by[("rte", "pkd")]["params"] == {"selector.name": "pkd"}
    assert by[("rte", "pkd")]["run"]["train"]["max_seq_length"] == 128
    sst2 = by[("sst2", "pkd")]["run"]
    assert (sst2["train"]["max_seq_length"], sst2["data"]["max_train_samples"]) == (64, 100)


def test_sweep_set_overrides_base_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    sweep = load_sweep_config(path, {"resources.use_gpu": True, "resources.gpus_per_worker": 0.25})
    assert (sweep.resources.use_gpu, sweep.resources.gpus_per_worker) == (True, 0.25)
    assert [t["trial_key"] for t in expand_grid(sweep)] == [t["trial_key"] for t in expand_grid(load_sweep_config(path))]
    assert run_sweep(str(path), dry_run=True, overrides={"tasks": ["mrpc"]}) == 2
    assert "only run settings can be set on a sweep" in capsys.readouterr().err
    assert run_sweep(str(path), dry_run=True, overrides={"resources.gpu_per_worker": 1}) == 2
    assert "unknown key 'resources.gpu_per_worker'" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_space_files_are_valid(path: Path) -> None:
    """Every committed space file loads, and a grid expands to trials whose run settings validate."""
    sweep = load_sweep_config(path)
    assert sweep.tasks
    if sweep.search.mode == "grid":
        trials = expand_grid(sweep, str(path))
        assert len(trials) >= len(sweep.tasks)
        assert len({t["trial_key"] for t in trials}) == len(trials)  # what --resume recognises trials by


def test_dry_run_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`kdray sweep --dry-run | head -1`: no BrokenPipeError traceback when the reader leaves early."""
    import subprocess
    import sys

    path = tmp_path / "wide.yaml"
    lrs = ", ".join(f"{1e-5 * (i + 1):.6g}" for i in range(800))  # 1,600 trials: far more than a pipe buffer
    path.write_text(GOOD + f"search:\n  space:\n    train.lr: {{grid: [{lrs}]}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "kdray", "sweep", str(path), "--dry-run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"sweep ")
    proc.stdout.close()  # what head does after its first line
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()[-2000:]
    assert proc.returncode == 1
