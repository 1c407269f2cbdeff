"""Grid expansion into typed trials, their keys (pinned: committed results and --resume depend on them),
the Optuna sample decoding, and --dry-run; none of it starts Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdray.config import ConfigError, load_sweep_config
from kdray.sweep import expand_grid, resolve_paths, run_sweep

REPO = Path(__file__).resolve().parents[1]
GOOD = (Path(__file__).resolve().parent / "spaces" / "good.yaml").read_text()  # a small valid space


def test_good_file_loads_and_grid_expands(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD + "search:\n  space:\n    selector.phase_steps: {grid: [5, 10]}\n"
                    "    knowledge.pool: {choice: [[finetune, response], [finetune]]}\n")
    sweep = load_sweep_config(path)
    trials = expand_grid(sweep)
    # 2 phase_steps x 2 pools x 1 task x 2 seeds
    assert len(trials) == 8
    assert len({t.key for t in trials}) == 8
    assert {t.run.train.seed for t in trials} == {1, 2}
    assert {t.run.selector.phase_steps for t in trials} == {5, 10}
    assert all(t.run.task == "rte" for t in trials)


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
    by = {(t.task, t.run.selector.name): t for t in trials if t.seed == 1}
    ac = by[("rte", "actor_critic")]
    assert ac.params == {"selector.name": "actor_critic", "selector.action": "hard"}  # one column per key
    assert ac.run.selector.action == "hard"
    assert ac.run.selector.phase_steps == 50  # the section's other settings are kept
    assert by[("rte", "pkd")].params == {"selector.name": "pkd"}
    assert by[("rte", "pkd")].run.train.max_seq_length == 128
    sst2 = by[("sst2", "pkd")].run
    assert (sst2.train.max_seq_length, sst2.data.max_train_samples) == (64, 100)


def test_sweep_set_overrides_base_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    sweep = load_sweep_config(path, {"resources.use_gpu": True, "resources.gpus_per_worker": 0.25})
    assert (sweep.resources.use_gpu, sweep.resources.gpus_per_worker) == (True, 0.25)
    assert [t.key for t in expand_grid(sweep)] == [t.key for t in expand_grid(load_sweep_config(path))]
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
        assert len({t.key for t in trials}) == len(trials)  # what --resume recognises trials by


def test_dry_run_into_a_closed_pipe_ends_quietly(tmp_path: Path, glue_dir: Path) -> None:
    """`kdray sweep --dry-run | head -1`: no BrokenPipeError traceback when the reader leaves early."""
    import os
    import subprocess
    import sys

    path = tmp_path / "wide.yaml"
    lrs = ", ".join(f"{1e-5 * (i + 1):.6g}" for i in range(800))  # 1,600 trials: far more than a pipe buffer
    path.write_text(GOOD + f"search:\n  space:\n    train.lr: {{grid: [{lrs}]}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "kdray", "sweep", str(path), "--dry-run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "KDRAY_GLUE_DIR": str(glue_dir)})  # dry-run checks the data too
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"sweep ")
    proc.stdout.close()  # what head does after its first line
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()[-2000:]
    assert proc.returncode == 1


# Computed on main before the sweep became a package (commit e662c72): the same YAML must keep giving these
# keys, or committed studies and users' --resume lose their trials.
PINNED_KEYS = {
    "smoke.yaml": ["smoke-rte-s1-c987b5b530", "smoke-rte-s2-c769f8d2ac", "smoke-rte-s1-8847b6dae0",
                   "smoke-rte-s2-ad2ab2c7f0"],
    "cpu_glue.yaml": {0: ("cpu_glue-rte-s1-381eeec4ea", {"selector.name": "finetune"}),
                      119: ("cpu_glue-sst2-s3-39fba0b277", {"selector.action": "soft", "selector.name": "actor_critic"})},
}


def test_trial_keys_are_pinned() -> None:
    smoke = expand_grid(load_sweep_config(REPO / "search_spaces" / "smoke.yaml"))
    assert [t.key for t in smoke] == PINNED_KEYS["smoke.yaml"]
    assert [(t.seed, t.run.selector.name) for t in smoke] == [(1, "vanilla_kd"), (2, "vanilla_kd"),
                                                               (1, "actor_critic"), (2, "actor_critic")]
    glue = expand_grid(load_sweep_config(REPO / "search_spaces" / "cpu_glue.yaml"))
    assert len(glue) == 120
    for index, (key, params) in PINNED_KEYS["cpu_glue.yaml"].items():
        assert (glue[index].key, glue[index].params) == (key, params)


def test_committed_study_rows_are_found_by_key() -> None:
    """The committed cpu_glue table's trial ids are keys its space file still expands to."""
    from kdray.results import load

    trials, _ = load(REPO / "results" / "cpu_glue")
    expanded = {t.key for t in expand_grid(load_sweep_config(REPO / "search_spaces" / "cpu_glue.yaml"))}
    assert set(trials["trial_id"]) <= expanded


def test_trials_are_typed_and_never_changed_in_place(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD + "data: {dir: glue_here}\n")
    sweep = load_sweep_config(path)
    resolved = resolve_paths(sweep, tmp_path)
    assert sweep.data.dir == "glue_here" and resolved.data.dir == str(tmp_path / "glue_here")
    trial = expand_grid(resolved)[0]
    with pytest.raises(AttributeError):
        trial.key = "other"  # type: ignore[misc]
    out = trial.run.with_output(str(tmp_path / "out"), progress=False)
    assert (out.output_dir, out.train.progress) == (str(tmp_path / "out"), False)
    assert (trial.run.output_dir, trial.run.train.progress) == ("runs/train", True)  # the trial's run is unchanged
    assert trial.identity() == {"trial_key": trial.key, "task": "rte", "seed": 1, "repeat": 0, "params": {}}


def test_paths_a_trial_sets_resolve_against_the_file_but_keys_keep_them_as_written(tmp_path: Path) -> None:
    """A path from task_overrides or a searched value reads like one in the base settings: relative to the file."""
    (tmp_path / "spaces").mkdir()
    path = tmp_path / "spaces" / "paths.yaml"
    path.write_text(GOOD + "task_overrides: {rte: {data.cache_dir: rte_cache}}\n"
                    "search:\n  mode: grid\n  space:\n    selector.init_from: {grid: [null, ../prior, /abs/prior]}\n")
    trials = [t for t in expand_grid(resolve_paths(load_sweep_config(path), path.parent)) if t.seed == 1]
    assert [t.run.selector.init_from for t in trials] == [None, str(tmp_path / "prior"), "/abs/prior"]
    assert {t.run.data.cache_dir for t in trials} == {str(tmp_path / "spaces" / "rte_cache")}
    assert [t.params["selector.init_from"] for t in trials] == [None, "../prior", "/abs/prior"]  # as written
    again = [t for t in expand_grid(resolve_paths(load_sweep_config(path), tmp_path / "x")) if t.seed == 1]
    assert [t.key for t in again] == [t.key for t in trials]  # keys do not depend on where the file lies


def test_optuna_sample_becomes_a_typed_trial(tmp_path: Path) -> None:
    from kdray.sweep.expansion import optuna_trial, tune_identity

    path = tmp_path / "opt.yaml"
    path.write_text(GOOD + "search:\n  mode: optuna\n  space:\n    train.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
                    "    knowledge.pool: {choice: [[finetune], [finetune, response]]}\n"
                    "    selector: {choice: [{name: pkd}, {name: actor_critic, action: hard}]}\n")
    sweep = load_sweep_config(path)
    sample = {"train.lr": 3.0e-4, "knowledge.pool": 1, "selector": 1}  # list/mapping choices come as indices
    trial = optuna_trial(sweep, "rte", "abc_00001", sample)
    assert trial.key == "t-rte-abc_00001" and (trial.seed, trial.repeat) == (1, 0)
    assert trial.params == {"train.lr": 3.0e-4, "knowledge.pool": ["finetune", "response"],
                            "selector.name": "actor_critic", "selector.action": "hard"}
    assert (trial.run.train.lr, trial.run.train.seed, trial.run.knowledge.pool) == (3.0e-4, 1, ["finetune", "response"])
    assert (trial.run.selector.name, trial.run.selector.action) == ("actor_critic", "hard")
    assert tune_identity(sweep, sample, "rte", "abc_00001") == (trial.key, "rte", trial.params)
    with pytest.raises(ConfigError, match="trial t-rte-abc_00002: train.lr: Input should be greater than 0"):
        optuna_trial(sweep, "rte", "abc_00002", {**sample, "train.lr": -1.0})  # validated once, where it is built


def test_a_searched_key_the_selector_ignores_runs_once_under_its_first_key() -> None:
    """baselines.yaml grids selector.action over selectors that ignore it: each such run happens once (126 -> 72
    trials), under the key it always had, and both actions of actor_critic still run."""
    from kdray.sweep.expansion import trial_key

    sweep = load_sweep_config(REPO / "search_spaces" / "baselines.yaml")
    trials = expand_grid(sweep)
    assert len(trials) == 3 * 3 * (6 + 2)  # tasks x seeds x (6 selectors that ignore the action + AC soft/hard)
    assert len({(t.task, t.seed, t.run.selector.name, t.run.selector.action if t.run.selector.name ==
                 "actor_critic" else None) for t in trials}) == len(trials)
    kept = [t for t in trials if t.run.selector.name == "pkd"]
    assert {t.params["selector.action"] for t in kept} == {"soft"}  # the first value of the grid
    for t in trials:  # keys are the ones the full product always gave
        assert t.key == trial_key(sweep.name, t.task, t.seed, t.params, t.repeat)


def test_set_on_a_searched_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "searched.yaml"
    path.write_text(GOOD + "search:\n  space:\n    selector: {grid: [{name: pkd}, {name: all}]}\n"
                    "    train.lr: {grid: [0.001, 0.01]}\n")
    for key, value, searched in (("selector.name", "finetune", "selector"), ("train.lr", 0.1, "train.lr"),
                                 ("train", {"lr": 0.1}, "train.lr")):
        assert run_sweep(str(path), dry_run=True, overrides={key: value}) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--set {key}: " in err[0] and f"searches {searched} " in err[0], err
    from kdray.sweep.run import load_sweep

    assert load_sweep(str(path), {"train.batch_size": 8}, None, None).train.batch_size == 8  # not searched: applied


@pytest.mark.parametrize("startup", [2, 10])
def test_startup_trials_is_where_tpe_starts_to_model_scores(tmp_path: Path, startup: int) -> None:
    """Two studies with one seed and opposite scores propose the same samples while TPE is still in its random
    start (``search.startup_trials``), and different ones once it models the scores."""
    import optuna

    from kdray.sweep.tuner import tpe_sampler

    path = tmp_path / "opt.yaml"
    path.write_text(GOOD + f"search:\n  mode: optuna\n  startup_trials: {startup}\n"
                    "  space:\n    train.lr: {uniform: [1.0e-5, 1.0]}\n")
    search = load_sweep_config(path).search
    assert search.startup_trials == startup
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    proposals = []
    for sign in (1.0, -1.0):
        study = optuna.create_study(sampler=tpe_sampler(search), direction="maximize")
        study.optimize(lambda t: sign * t.suggest_float("x", 0.0, 1.0), n_trials=4)
        proposals.append([t.params["x"] for t in study.trials])
    assert proposals[0][:2] == proposals[1][:2]  # inside either random start
    assert (proposals[0][2:] == proposals[1][2:]) == (startup > 2)


def test_startup_trials_below_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "opt.yaml"
    path.write_text(GOOD + "search:\n  mode: optuna\n  startup_trials: 0\n  space:\n    train.lr: {uniform: [1.0e-5, 1.0]}\n")
    with pytest.raises(ConfigError, match=r"search.startup_trials: Input should be greater than or equal to 1"):
        load_sweep_config(path)


def test_tasks_option_runs_a_subset_under_the_whole_files_keys(capsys: pytest.CaptureFixture) -> None:
    """``kdray sweep --tasks``: the chosen tasks' trials, with their task_overrides and the keys the whole file
    gives them (so a later --resume of the whole file runs only the rest); a task the file lacks is refused
    before Ray, naming the option, the file and the allowed tasks."""
    from kdray.sweep.run import load_sweep

    path = str(REPO / "search_spaces" / "glue_study.yaml")
    full = load_sweep(path, None, None, None)
    whole = expand_grid(full, path)
    subset = load_sweep(path, None, None, None, ["stsb", "cola"])
    assert subset.tasks == [t for t in full.tasks if t in ("cola", "stsb")]  # the file's order
    assert set(subset.task_overrides) == set(full.task_overrides) & {"cola", "stsb"}
    part = expand_grid(subset, path)
    expected = [t for t in whole if t.task in ("cola", "stsb")]
    assert [t.key for t in part] == [t.key for t in expected] and part
    assert [t.run for t in part] == [t.run for t in expected]  # task_overrides kept for the chosen tasks
    assert run_sweep(path, dry_run=True, tasks=["stsb", "qnli"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("--tasks qnli: not one of ") and "glue_study.yaml's tasks; allowed: " in err[0]
