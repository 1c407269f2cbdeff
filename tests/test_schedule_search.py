"""Issue 15, point 7: the episode-level schedule search. The final run scores the reward-set holdout
(``holdout_score``, in the run record, trials.parquet and every Tune report); ``search.metric`` is checked before
Ray starts; ``search_spaces/schedule_search.yaml`` is a valid short-episode Optuna space; ``kdray best`` turns a
finished search into a ``task_overrides`` block that a grid space accepts and that reaches its trials' runs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdray.cli import main
from kdray.results import append_trials, load, trial_row
from test_cli import refused
from test_cli import space as cli_space

REPO = Path(__file__).resolve().parents[1]
SEARCH_FILE = REPO / "search_spaces" / "schedule_search.yaml"
STUDY_FILE = REPO / "search_spaces" / "glue_study.yaml"


# --------------------------------------------------------------------------- holdout_score in the run record


def test_holdout_score_is_the_task_metric_on_the_holdout(rte_config, tiny_teacher: str, tmp_path: Path) -> None:
    """The record's holdout_score is the final student's accuracy on the holdout rows (not dev, not train)."""
    from transformers import AutoModelForSequenceClassification

    from kdray.distill import train
    from kdray.export import STUDENT_FOLDER
    from kdray.glue import make_collator, prepare_data
    from kdray.models import load_tokenizer
    from kdray.training import evaluate

    config = rte_config(tmp_path / "run", **{"train.max_steps": 4})
    reports: list[dict] = []
    result = train(config, teacher_path=tiny_teacher, report=reports.append)
    assert 0.0 <= result.holdout_score <= 1.0
    assert reports[-1]["holdout_score"] == result.holdout_score  # what Tune sees at the end
    assert all(math.isnan(r["holdout_score"]) for r in reports[:-1])  # not scored before the end
    tokenizer = load_tokenizer(tiny_teacher)
    data = prepare_data("rte", tokenizer, config.data, config.train.max_seq_length, config.train.seed)
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / STUDENT_FOLDER)
    ev = evaluate("rte", student, {"holdout": data.holdout}, make_collator(tokenizer), 32)
    assert ev.score == pytest.approx(result.holdout_score, abs=1e-9)
    assert len(data.holdout) == 249  # 10% of RTE's 2,490 train rows, none of them in the 64 training rows
    assert not set(data.holdout["idx"]) & set(data.train["idx"])


# --------------------------------------------------------------------------- search.metric before Ray


def test_search_metric_typo_is_refused_before_ray(tmp_path: Path, glue_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    path = cli_space(tmp_path, glue_dir, search={"mode": "optuna", "metric": "holdout_scor"})
    for extra in ([], ["--dry-run"]):
        refused(["sweep", str(path), "--storage", str(tmp_path / "runs"), *extra], capsys,
                "search.metric", "holdout_scor", "dev_score, holdout_score", max_lines=1)
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


def test_asha_on_holdout_score_is_refused(tmp_path: Path, glue_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ASHA compares intermediate reports, where holdout_score is NaN: refused, naming the way out."""
    path = cli_space(tmp_path, glue_dir, search={"mode": "optuna", "metric": "holdout_score",
                                                 "scheduler": {"type": "asha"}})
    refused(["sweep", str(path), "--dry-run"], capsys, "asha", "holdout_score", "dev_score", max_lines=1)


# --------------------------------------------------------------------------- the committed search space


def test_schedule_search_file_is_a_short_episode_holdout_search(capsys: pytest.CaptureFixture[str]) -> None:
    from kdray.sweep.run import load_sweep

    sweep = load_sweep(str(SEARCH_FILE), None, None, None)
    s = sweep.search
    assert (s.mode, s.metric, s.mode_direction, s.num_samples, s.seed) == ("optuna", "holdout_score", "max", 12, 0)
    kinds = ["response", "feature", "relation"]
    assert set(s.space) == {f"selector.schedule.{k}.{p}" for k in kinds for p in ("start", "end", "mid")}
    for key, dist in s.space.items():
        assert dist.uniform == ((0.2, 0.8) if key.endswith(".mid") else (0.0, 1.0)), key
    assert sweep.selector.name == "schedule" and sweep.knowledge.pool == ["finetune", *kinds]
    assert (sweep.train.epochs, sweep.train.seeds) == (1, [1])
    assert main(["sweep", str(SEARCH_FILE), "--dry-run"]) == 0
    assert "metric=holdout_score" in capsys.readouterr().out


def test_schedule_search_shares_the_study_teachers() -> None:
    """Everything but train.epochs/seeds, the selector and the search is glue_study.yaml's, so both sweeps
    name the same teacher folders under one --storage."""
    from kdray.sweep.run import load_sweep
    from kdray.sweep.teachers import teacher_id

    if not STUDY_FILE.is_file():
        pytest.skip("search_spaces/glue_study.yaml is not in this checkout")
    search, study = (load_sweep(str(p), None, None, None) for p in (SEARCH_FILE, STUDY_FILE))
    # the study's overrides also hold each task's searched schedule (what this search produced)
    unsearched = {task: {k: v for k, v in over.items() if not k.startswith("selector.schedule.")}
                  for task, over in study.task_overrides.items()}
    assert search.tasks == study.tasks and search.task_overrides == {t: o for t, o in unsearched.items() if o}
    for section in ("data", "teacher", "student", "knowledge", "resources"):
        assert getattr(search, section) == getattr(study, section), section
    assert search.train.model_copy(update={"epochs": 3.0, "seeds": study.train.seeds}) == study.train
    for task in study.tasks:
        runs = [s.trial_run(task, {}, task) for s in (search, study)]
        assert teacher_id(runs[0]) == teacher_id(runs[1]), task


# --------------------------------------------------------------------------- kdray best


def _trials(folder: Path) -> Path:
    """A hand-written search: two tasks, an ERROR with the top score, a STOPPED one, a NaN score."""
    def row(tid: str, task: str, status: str, holdout: float, dev: float, end: float) -> dict:
        searched = {"selector.schedule.response.end": end, "selector.schedule.response.mid": 0.41234,
                    "train.lr": 1.23456e-4}
        return trial_row("s", tid, {"task": task, "holdout_score": holdout, "dev_score": dev}, searched, status=status)

    append_trials(folder, [
        row("a", "rte", "TERMINATED", 0.61, 0.70, 0.12345), row("b", "rte", "TERMINATED", 0.65, 0.60, 0.73049),
        row("c", "rte", "ERROR", 0.99, 0.99, 0.5), row("d", "rte", "STOPPED", 0.98, 0.98, 0.5),
        row("e", "mrpc", "TERMINATED", math.nan, 0.9, 0.2), row("f", "mrpc", "TERMINATED", 0.8, 0.5, 0.9),
    ])
    return folder


def test_best_prints_task_overrides_of_the_best_finished_trial(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = _trials(tmp_path / "sweep")
    assert main(["best", str(folder)]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == {"task_overrides": {
        "rte": {"selector.schedule.response.end": 0.73, "selector.schedule.response.mid": 0.412},
        "mrpc": {"selector.schedule.response.end": 0.9, "selector.schedule.response.mid": 0.412}}}
    assert "# rte: best trial b, holdout_score=0.6500" in out and "# mrpc: best trial f, holdout_score=0.8000" in out
    assert "train.lr" not in out  # only the --prefix's keys
    assert main(["best", str(folder), "--metric", "dev_score", "--prefix", ""]) == 0
    by_dev = yaml.safe_load(capsys.readouterr().out)["task_overrides"]
    assert by_dev["rte"]["selector.schedule.response.end"] == 0.123 and by_dev["rte"]["train.lr"] == 1.23e-4
    assert by_dev["mrpc"]["selector.schedule.response.end"] == 0.2


def test_best_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(["best", str(tmp_path)], capsys, "trials.parquet", "no such file", max_lines=1)
    folder = _trials(tmp_path / "sweep")
    refused(["best", str(folder), "--metric", "holdout"], capsys, "no column 'holdout'", "holdout_score",
            max_lines=1)
    refused(["best", str(folder), "--prefix", "selector.bandit"], capsys, "no searched column",
            "selector.schedule.response.end", max_lines=1)
    failed = tmp_path / "failed"
    append_trials(failed, [trial_row("s", "x", {"task": "rte", "holdout_score": 0.5},
                                     {"selector.schedule.response.end": 0.5}, status="ERROR")])
    refused(["best", str(failed)], capsys, "no TERMINATED trial", max_lines=1)


# --------------------------------------------------------------------------- search -> best -> grid, end to end


@pytest.mark.slow
def test_schedule_search_to_grid_end_to_end(tmp_path: Path, glue_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny Optuna search of the schedule on holdout_score; `kdray best` on it; its block pasted into a grid
    space with a {name: schedule} row validates, and that row's run carries the searched values."""
    from kdray.sweep import run_sweep
    from kdray.sweep.expansion import expand_grid
    from kdray.sweep.run import load_sweep
    from test_sweep import space

    keys = ["selector.schedule.response.start", "selector.schedule.response.end", "selector.schedule.response.mid"]
    path = space(tmp_path, glue_dir, "sched", {"mode": "optuna", "num_samples": 2, "seed": 3,
                                               "metric": "holdout_score", "space": {
                                                   keys[0]: {"uniform": [0.0, 1.0]}, keys[1]: {"uniform": [0.0, 1.0]},
                                                   keys[2]: {"uniform": [0.2, 0.8]}}}, selector="schedule")
    assert run_sweep(str(path), storage=str(tmp_path / "runs")) == 0
    trials, _ = load(tmp_path / "runs" / "sched")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    assert trials["holdout_score"].between(0.0, 1.0).all()
    capsys.readouterr()
    assert main(["best", str(tmp_path / "runs" / "sched")]) == 0
    block = yaml.safe_load(capsys.readouterr().out)["task_overrides"]
    best = trials.loc[trials["holdout_score"].astype(float).idxmax()]
    assert block == {"rte": {k: round(float(best[k]), 3) for k in keys}}
    grid = yaml.safe_load(path.read_text())
    grid.update(name="grid", task_overrides=block,
                search={"mode": "grid", "space": {"selector": {"grid": [{"name": "all"}, {"name": "schedule"}]}}})
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(yaml.safe_dump(grid))
    sweep = load_sweep(str(grid_path), None, None, None)
    runs = {t.run.selector.name: t.run for t in expand_grid(sweep, str(grid_path))}
    assert set(runs) == {"all", "schedule"}
    got = runs["schedule"].selector.schedule.response
    assert (got.start, got.end, got.mid) == tuple(block["rte"][k] for k in keys)
    assert pd.notna(best["holdout_score"])
