"""A resumed sweep refuses recorded trials that ran under other settings than the space file now gives them
(kdray.sweep.settings): the key names only task, seed and searched values, so an edited fixed setting would
otherwise leave old trials in place, reported beside new ones. (End to end with Ray: tests/test_sweep.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from kdray.config import ConfigError
from kdray.results import append_traces, append_trials, load, trial_row
from kdray.sweep.expansion import expand_grid
from kdray.sweep.run import load_sweep, preflight
from kdray.sweep.settings import (check_recorded_settings, differences, forget_changed, run_settings,
                                  settings_json)


def _space(tmp: Path, glue_dir: Path, **fixed: dict) -> Path:
    doc = {"name": "s", "tasks": ["rte", "mrpc"],
           "data": {"source": "local", "dir": str(glue_dir), "max_train_samples": 32},
           "teacher": {"model": "tiny-bert", "epochs": 1},
           "train": {"max_steps": 4, "seeds": [1, 2]},
           "search": {"mode": "grid", "space": {"selector.name": {"grid": ["finetune", "all"]}}}}
    for section, values in fixed.items():
        doc.setdefault(section, {}).update(values)
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _trials(path: Path, overrides: dict | None = None) -> list:
    return expand_grid(load_sweep(str(path), overrides, None, None), str(path))


def _record(sweep_dir: Path, trials: list) -> None:
    append_trials(sweep_dir, [trial_row("s", t.key, {"task": t.task, "dev_score": 0.5}, run_settings=settings_json(t.run))
                              for t in trials])


def test_settings_leave_out_places_and_display(tmp_path: Path, glue_dir: Path) -> None:
    run = _trials(_space(tmp_path, glue_dir))[0].run
    settings = run_settings(run)
    assert settings["teacher.epochs"] == 1 and settings["train.seed"] == 1 and settings["task"] == "rte"
    assert not any(k.startswith(("data.dir", "output_dir", "resources", "train.progress", "train.seeds"))
                   for k in settings)
    moved = run.model_copy(update={"output_dir": "/elsewhere", "data": run.data.model_copy(update={"dir": "/x"})})
    assert settings_json(moved) == settings_json(run)


def test_pasted_schedule_changes_only_the_schedule_rows(tmp_path: Path, glue_dir: Path) -> None:
    """The README's schedule-search procedure pastes selector.schedule into task_overrides and adds a
    {name: schedule} row: the recorded rows of other selectors resume, a recorded schedule row would not."""
    path = _space(tmp_path, glue_dir)
    doc = yaml.safe_load(path.read_text())
    doc["search"]["space"]["selector.name"]["grid"].append("schedule")
    path.write_text(yaml.safe_dump(doc))
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    _record(sweep_dir, _trials(path))
    doc["task_overrides"] = {"rte": {"selector.schedule.response.end": 0.25}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"2 trial\(s\).*s-rte-s1-.*\n  selector.schedule.response.end: 1.0 -> 0.25\nA resume"):
        check_recorded_settings(sweep_dir, _trials(path), "s")
    _record(sweep_dir, [t for t in _trials(path) if t.params["selector.name"] == "schedule"])  # as if re-run
    check_recorded_settings(sweep_dir, _trials(path), "s")


def test_a_weight_removed_from_selector_weights_is_a_difference(tmp_path: Path, glue_dir: Path) -> None:
    """A mapping that is a value (``selector.weights``) is compared whole, not key by key (where a key only the
    recorded side holds would not count)."""
    path = _space(tmp_path, glue_dir, selector={"name": "fixed", "weights": {"finetune": 1.0, "response": 0.5}},
                  search={"space": {"train.lr": {"grid": [1.0e-4]}}})
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    _record(sweep_dir, _trials(path))
    doc = yaml.safe_load(path.read_text())
    doc["selector"]["weights"] = {"finetune": 1.0}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r'selector.weights: \{"finetune": 1.0, "response": 0.5\} -> \{"finetune": 1.0\}'):
        check_recorded_settings(sweep_dir, _trials(path), "s")


def test_a_key_only_one_side_holds_is_not_a_difference() -> None:
    assert differences({"a": 1, "old": 2}, {"a": 1, "new": 3}) == []
    assert differences({"a": 1, "b": "x"}, {"a": 2, "b": "x"}) == ["a: 1 -> 2"]


def test_edited_task_override_is_refused_before_ray(tmp_path: Path, glue_dir: Path) -> None:
    """The case met in the study: CoLA's teacher recipe changed between sittings (teacher.epochs 3 -> 10)."""
    path = _space(tmp_path, glue_dir)
    sweep_dir = tmp_path / "runs" / "s"
    sweep_dir.mkdir(parents=True)
    _record(sweep_dir, [t for t in _trials(path) if t.task == "mrpc"])
    check_recorded_settings(sweep_dir, _trials(path), "s")  # same file: nothing to refuse
    doc = yaml.safe_load(path.read_text())
    doc["task_overrides"] = {"mrpc": {"teacher.epochs": 10}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        check_recorded_settings(sweep_dir, _trials(path), "s")
    text = str(err.value)
    assert "4 trial(s)" in text and "teacher.epochs: 1.0 -> 10.0" in text and "s-mrpc-s1-" in text
    assert "--name" in text and str(sweep_dir / "trials.parquet") in text
    # an RTE-only override touches no recorded trial
    doc["task_overrides"] = {"rte": {"teacher.epochs": 10}}
    path.write_text(yaml.safe_dump(doc))
    check_recorded_settings(sweep_dir, _trials(path), "s")


def test_preflight_refuses_a_changed_fixed_setting_from_the_command_line(tmp_path: Path, glue_dir: Path) -> None:
    path = _space(tmp_path, glue_dir)
    storage = tmp_path / "runs"
    (storage / "s").mkdir(parents=True)
    _record(storage / "s", _trials(path))
    sweep = load_sweep(str(path), {"train.lr": 2.0e-4}, None, None)
    with pytest.raises(ConfigError, match=r"8 trial\(s\).*\n  train.lr: 5e-05 -> 0.0002"):
        preflight(sweep, expand_grid(sweep, str(path)), str(storage), False, True)


def test_rows_without_settings_are_not_checked(tmp_path: Path, glue_dir: Path) -> None:
    """Rows written before the column (the committed studies) resume as before."""
    path = _space(tmp_path, glue_dir)
    trials = _trials(path, {"train.lr": 1.0})
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    append_trials(sweep_dir, [trial_row("s", t.key, {"task": t.task}) for t in trials])
    check_recorded_settings(sweep_dir, _trials(path), "s")
    _record(sweep_dir, trials[:1])
    stored = json.loads(pq.read_table(sweep_dir / "trials.parquet").to_pylist()[-1]["run_settings"])
    assert stored["train.lr"] == 1.0
    with pytest.raises(ConfigError, match=r"1 trial\(s\)"):
        check_recorded_settings(sweep_dir, _trials(path), "s")


def test_rerun_changed_forgets_only_the_changed_trials(tmp_path: Path, glue_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--rerun-changed removes the changed trials' rows and traces and sets Tune's state aside (kept), so a fresh
    Tuner runs them while every other recorded trial is skipped. (End to end: tests/test_sweep.py.)"""
    path = _space(tmp_path, glue_dir)
    sweep_dir = tmp_path / "s"
    (sweep_dir / "tune").mkdir(parents=True)
    trials = _trials(path)
    _record(sweep_dir, trials)
    append_traces(sweep_dir, [{"trial_id": t.key, "stage": 2, "episode": -1, "step": 0, "phase": 0,
                               "knowledge": "finetune", "weight": 1.0} for t in trials])
    assert forget_changed(sweep_dir, trials) == [] and (sweep_dir / "tune").is_dir()
    doc = yaml.safe_load(path.read_text())
    doc["task_overrides"] = {"mrpc": {"train.lr": 1.0e-3}}
    path.write_text(yaml.safe_dump(doc))
    gone = forget_changed(sweep_dir, _trials(path))
    assert len(gone) == 4 and all("-mrpc-" in k for k in gone)
    rows, traces = load(sweep_dir)
    assert sorted(rows["trial_id"]) == sorted(t.key for t in trials if t.task == "rte")
    assert set(traces["trial_id"]) == set(rows["trial_id"])
    assert not (sweep_dir / "tune").exists() and len(list(sweep_dir.glob("tune.before-rerun-*"))) == 1
    assert "4 recorded trial(s) ran with other settings and run again" in capsys.readouterr().out
    check_recorded_settings(sweep_dir, _trials(path), "s")  # what is left matches the file


def test_rerun_changed_is_refused_for_optuna_and_uri_storage(tmp_path: Path, glue_dir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from kdray.sweep import run_sweep

    path = _space(tmp_path, glue_dir)
    assert run_sweep(str(path), storage="s3://bucket/x", rerun_changed=True) == 2
    assert "--rerun-changed needs a local --storage" in capsys.readouterr().err
    doc = yaml.safe_load(path.read_text())
    doc["search"] = {"mode": "optuna", "num_samples": 2, "space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}}}
    path.write_text(yaml.safe_dump(doc))
    assert run_sweep(str(path), storage=str(tmp_path / "runs"), rerun_changed=True) == 2
    assert "--rerun-changed applies to grid sweeps" in capsys.readouterr().err


def test_resume_prepares_teachers_only_for_trials_left_to_run(tmp_path: Path, glue_dir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A fresh machine restoring a study's Parquet files must not fine-tune the teacher of a task whose every
    trial is recorded (the study's CoLA teacher took 10 minutes for trials that all skip). A trial recorded as
    ERROR is not run again either; one STOPPED early (by ASHA) is, so it keeps its teacher."""
    from kdray.sweep.run import stage_runs, unfinished
    from kdray.sweep.teachers import teacher_id

    trials = _trials(_space(tmp_path, glue_dir))
    rte = [t for t in trials if t.task == "rte"]
    mrpc = [t for t in trials if t.task == "mrpc"]
    sweep_dir = tmp_path / "s"
    assert unfinished(trials, str(sweep_dir)) == trials and unfinished(None, str(sweep_dir)) is None
    _record(sweep_dir, rte[:-1])
    append_trials(sweep_dir, [trial_row("s", rte[-1].key, {"task": "rte"}, status="ERROR", error="NaN loss"),
                              trial_row("s", mrpc[0].key, {"task": "mrpc"}, status="STOPPED")])
    left = unfinished(trials, str(sweep_dir))
    assert [t.key for t in left] == [t.key for t in mrpc]
    assert f"{len(rte)} of {len(trials)} trial(s) already recorded" in capsys.readouterr().out
    assert {r.task for r in stage_runs(load_sweep(str(tmp_path / "space.yaml"), None, None, None), left)} == {"mrpc"}
    assert len({teacher_id(t.run) for t in left}) == 1
    assert unfinished(trials, "s3://bucket/s") == trials  # no local record on a URI storage: everything runs
