"""Results storage: schema, de-duplication, crash-safe writes, concurrent appends, load()."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from kdray import results
from kdray.records import RunResult
from kdray.results import append_traces, append_trials, load, trace_rows, trial_row


def _result(task: str = "rte", score: float = 0.6, seed: int = 1) -> dict:
    return {
        "task": task, "metric_name": "accuracy", "dev_score": score, "dev_metrics": {"accuracy": score},
        "teacher_score": 0.7, "method": "actor_critic_soft", "action": "soft",
        "knowledge_pool": ["finetune", "response"], "phase_steps": 10,
        "reward_shaping": {"reward_set": "train_holdout", "exploration": 0.1, "cost": 0.0, "normalize": True,
                           "clip": 5.0, "scale": 1.0, "eval_examples": 256},
        "seed": seed, "teacher": "/t", "student": "s", "student_params": 1000, "train_steps": 30,
        "train_seconds": 1.5, "samples_per_second": 20.0, "selector_seconds": 0.1,
        "traces": [{"step": 10, "phase": 0, "episode": 0, "knowledge": "finetune", "weight": 0.5, "reward": 0.1,
                    "q_value": 0.0, "reward_set_loss": 0.7},
                   {"step": 10, "phase": 0, "episode": -1, "knowledge": "finetune", "weight": 0.9, "reward": 0.2,
                    "q_value": 0.1, "reward_set_loss": 0.6}],
    }


def _row(tid: str, score: float = 0.6, **searched: object) -> dict:
    return trial_row("sw", tid, _result(score=score), searched or {"selector.phase_steps": 10},
                     started_at="2026-01-01T00:00:00Z", finished_at=1767225660.0)


def test_schema_and_load_roundtrip(tmp_path: Path) -> None:
    append_trials(tmp_path, [_row("a", **{"selector.phase_steps": 10, "knowledge.pool": ["finetune", "response"]})])
    append_traces(tmp_path, trace_rows("a", _result()["traces"]))
    raw = pd.read_parquet(tmp_path / "trials.parquet")  # plain pandas reads it
    assert list(raw.columns[: len(results.TRIAL_COLUMNS)]) == list(results.TRIAL_COLUMNS)
    assert raw.loc[0, "knowledge.pool"] == '["finetune", "response"]'  # list-valued search column as JSON
    assert raw.loc[0, "selector.phase_steps"] == 10
    schema = pq.read_schema(tmp_path / "trials.parquet")
    assert str(schema.field("knowledge_pool").type) == "list<element: string>"
    assert str(schema.field("started_at").type) == "timestamp[us, tz=UTC]"
    trials, traces = load(tmp_path)
    assert trials.loc[0, "dev_metrics"] == {"accuracy": 0.6}
    assert trials.loc[0, "knowledge_pool"] == ["finetune", "response"]
    assert trials.loc[0, "reward_shaping"]["exploration"] == 0.1
    assert trials.loc[0, "finished_at"] == pd.Timestamp("2026-01-01T00:01:00Z")
    assert list(traces["stage"]) == [1, 2] and list(traces["episode"]) == [0, -1]
    assert set(results.TRACE_COLUMNS) <= set(traces.columns)
    # load also accepts the trials file itself
    assert len(load(tmp_path / "trials.parquet")[0]) == 1


def test_load_parent_with_one_and_two_sweeps(tmp_path: Path) -> None:
    append_trials(tmp_path / "one", [_row("a")])
    assert load(tmp_path)[0]["trial_id"].tolist() == ["a"]
    append_trials(tmp_path / "two", [_row("b")])
    with pytest.raises(ValueError, match="several sweeps"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing")


def test_reappend_replaces_row_and_traces(tmp_path: Path) -> None:
    append_trials(tmp_path, [_row("a", 0.5), _row("b", 0.6)])
    append_traces(tmp_path, trace_rows("a", _result()["traces"]) + trace_rows("b", _result()["traces"]))
    append_trials(tmp_path, [_row("a", 0.9)])
    append_traces(tmp_path, trace_rows("a", _result()["traces"][:1]))
    trials, traces = load(tmp_path)
    assert sorted(trials["trial_id"]) == ["a", "b"]
    assert trials.set_index("trial_id").loc["a", "dev_score"] == 0.9
    assert traces.groupby("trial_id").size().to_dict() == {"a": 1, "b": 2}


def test_failed_trial_row_without_result(tmp_path: Path) -> None:
    row = trial_row("sw", "x", {}, {"train.lr": 1e-4}, status="ERROR", error="OOM")
    append_trials(tmp_path, [row, _row("ok")])
    trials, _ = load(tmp_path)
    bad = trials.set_index("trial_id").loc["x"]
    assert bad["status"] == "ERROR" and bad["error"] == "OOM" and pd.isna(bad["dev_score"])
    with pytest.raises(ValueError, match="collides"):
        trial_row("sw", "y", {}, {"dev_score": 1.0})


def test_crash_during_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    append_trials(tmp_path, [_row("a")])
    before = (tmp_path / "trials.parquet").read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk died mid-rename")

    monkeypatch.setattr(os, "replace", boom)  # the rename inside kdray.io.atomic_write
    with pytest.raises(OSError, match="disk died"):
        append_trials(tmp_path, [_row("b")])
    monkeypatch.undo()
    assert (tmp_path / "trials.parquet").read_bytes() == before
    assert load(tmp_path)[0]["trial_id"].tolist() == ["a"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temp file left behind

    def half_write(table: object, where: object, **kwargs: object) -> None:
        where.write(b"PAR1 half")  # type: ignore[attr-defined]
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(results.pq, "write_table", half_write)
    with pytest.raises(RuntimeError):
        append_trials(tmp_path, [_row("c")])
    monkeypatch.undo()
    assert load(tmp_path)[0]["trial_id"].tolist() == ["a"]


def _append_many(sweep_dir: str, prefix: str, n: int) -> None:
    for i in range(n):
        append_trials(sweep_dir, [_row(f"{prefix}{i}", 0.5 + i / 100)])
        append_traces(sweep_dir, trace_rows(f"{prefix}{i}", _result()["traces"]))


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), p, 15)) for p in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    trials, traces = load(tmp_path)
    assert sorted(trials["trial_id"]) == sorted([f"p{i}" for i in range(15)] + [f"q{i}" for i in range(15)])
    assert len(traces) == 60


def test_mirror_to_uri_copies_whole_files(tmp_path: Path) -> None:
    from kdray.results import append_trials, load, mirror_to_uri, trial_row

    local = tmp_path / "local" / "sw"
    append_trials(local, [trial_row("sw", "t1", {}, status="ERROR", error="boom")])
    written = mirror_to_uri(local, f"file://{tmp_path}/bucket/sw")
    assert written == [f"{tmp_path}/bucket/sw/trials.parquet"]  # no traces yet: nothing half-made
    trials, _ = load(tmp_path / "bucket" / "sw")
    assert list(trials["trial_id"]) == ["t1"] and trials["error"].iloc[0] == "boom"


def _run_result(**changes: object) -> RunResult:
    fields = {k: v for k, v in _result().items()}
    fields.update(final_steps=20, mean_step_seconds=0.05, teacher_cache=True, holdout_score=0.55)
    fields.update(changes)
    return RunResult(**fields)  # type: ignore[arg-type]


def test_every_run_result_field_lands_in_trials_parquet(tmp_path: Path) -> None:
    """Each RunResult field is a trials.parquet column, or dropped on purpose (traces: traces.parquet)."""
    names = {f.name for f in dataclasses.fields(RunResult)}
    assert names - set(results.DROPPED_RESULT_FIELDS) <= set(results.TRIAL_COLUMNS)
    assert set(results.DROPPED_RESULT_FIELDS) == {"traces"}
    result = RunResult.from_json(_run_result().to_json())  # as it crosses a Tune report
    append_trials(tmp_path, [trial_row("sw", "a", result, {"train.lr": 1e-4})])
    row = load(tmp_path)[0].iloc[0]
    for name in names - {"traces"}:
        expected = getattr(result, name)
        assert row[name] == expected or (name == "knowledge_pool" and list(row[name]) == expected), name
    assert (row["selector_seconds"], row["final_steps"], row["teacher_cache"]) == (0.1, 20, True)
    assert row["holdout_score"] == 0.55


def test_files_from_before_a_column_still_load_and_append(tmp_path: Path) -> None:
    """A trials.parquet written before selector_seconds & co. existed: load() reads it, an append keeps its rows."""
    append_trials(tmp_path, [_row("old")])
    table = pq.read_table(tmp_path / "trials.parquet")
    table = table.drop_columns(["selector_seconds", "final_steps", "mean_step_seconds", "teacher_cache",
                                "holdout_score"])
    pq.write_table(table, tmp_path / "trials.parquet")  # what kdray wrote before those columns existed
    trials, _ = load(tmp_path)
    assert trials["trial_id"].tolist() == ["old"] and "selector_seconds" not in trials
    append_trials(tmp_path, [trial_row("sw", "new", _run_result(), {})])
    trials = load(tmp_path)[0].set_index("trial_id")
    assert pd.isna(trials.loc["old", "selector_seconds"]) and trials.loc["new", "selector_seconds"] == 0.1
    assert pd.isna(trials.loc["old", "holdout_score"]) and trials.loc["new", "holdout_score"] == 0.55
    assert trials.loc["old", "dev_score"] == 0.6
