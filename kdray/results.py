"""Sweep results on disk: ``trials.parquet`` and ``traces.parquet`` under ``<storage>/<sweep>/``.

Files are rewritten whole on every append (they are small: one row per trial, one per kind per phase),
under a lock (:func:`kdray.io.locked` on ``.results.lock``) so several processes can append, and written
with :func:`kdray.io.atomic_write_parquet` (temp file, fsync, rename), so a crash leaves either the old file
or the new one, never half of one. A trial id that is appended again replaces its old row and its old
traces (re-runs, resumes). Columns are read by name: a file written before a column existed still loads,
its rows holding nulls there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kdray.io import atomic_write_parquet, locked
from kdray.records import SEARCH_METRICS, RunResult

TRIALS_FILE = "trials.parquet"
TRACES_FILE = "traces.parquet"
LOCK_FILE = ".results.lock"

REWARD_SHAPING_TYPE = pa.struct([
    ("reward_set", pa.string()),
    ("exploration", pa.float64()),
    ("cost", pa.float64()),
    ("normalize", pa.bool_()),
    ("clip", pa.float64()),
    ("scale", pa.float64()),
    ("eval_examples", pa.int64()),
])

# One column per field of kdray.records.RunResult, plus the trial's identity and status. The one field left out,
# ``traces`` (per kind per phase), goes to traces.parquet row by row instead (TRACE_SCHEMA). Columns added
# later (selector_seconds, final_steps, mean_step_seconds, teacher_cache, attempts,
# student_path, holdout_score, run_settings) are null in rows of older files.
DROPPED_RESULT_FIELDS = {"traces": "stored row by row in traces.parquet"}
TRIAL_SCHEMA = pa.schema([
    ("sweep", pa.string()),
    ("trial_id", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("task", pa.string()),
    ("metric_name", pa.string()),
    ("dev_score", pa.float64()),
    ("dev_metrics", pa.map_(pa.string(), pa.float64())),
    ("holdout_score", pa.float64()),  # the main score on the reward-set holdout (train rows never trained on)
    ("teacher_score", pa.float64()),
    ("method", pa.string()),
    ("action", pa.string()),
    ("knowledge_pool", pa.list_(pa.string())),
    ("phase_steps", pa.int64()),
    ("reward_shaping", REWARD_SHAPING_TYPE),
    ("seed", pa.int64()),
    ("teacher", pa.string()),
    ("student", pa.string()),
    ("student_params", pa.int64()),
    ("train_steps", pa.int64()),
    ("train_seconds", pa.float64()),
    ("samples_per_second", pa.float64()),
    ("selector_seconds", pa.float64()),
    ("final_steps", pa.int64()),
    ("mean_step_seconds", pa.float64()),
    ("teacher_cache", pa.bool_()),
    ("branch_steps", pa.int64()),  # stage-1 paired side-branch steps (extra compute over train_steps)
    ("attempts", pa.int64()),  # times Tune started the trial: 1 + retries after its process or node died
    ("student_path", pa.string()),  # the saved student (save_pretrained) when it was the task's best so far
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    # the settings the trial ran with (sorted JSON, kdray.sweep.settings): a resume refuses to mix other ones
    ("run_settings", pa.string()),
])

TRACE_SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("stage", pa.int64()),  # 1 = selector-training episode, 2 = the final run
    ("episode", pa.int64()),  # -1 in the final run
    ("step", pa.int64()),
    ("phase", pa.int64()),
    ("knowledge", pa.string()),
    ("weight", pa.float64()),
    ("reward", pa.float64()),
    ("q_value", pa.float64()),
    ("reward_set_loss", pa.float64()),
])

TRIAL_COLUMNS: tuple[str, ...] = tuple(TRIAL_SCHEMA.names)
TRACE_COLUMNS: tuple[str, ...] = tuple(TRACE_SCHEMA.names)


# --------------------------------------------------------------------------- row builders


def _result_fields(result: RunResult | Mapping[str, Any] | None) -> dict[str, Any]:
    """A run record's fields by name; a RunResult must fit the schema (a new field needs a column)."""
    if isinstance(result, RunResult):
        out = result.record()
        missing = sorted(set(out) - set(TRIAL_COLUMNS) - set(DROPPED_RESULT_FIELDS))
        if missing:
            raise ValueError(f"RunResult fields {missing} have no trials.parquet column; add them to TRIAL_SCHEMA")
        return out
    return dict(result or {})


def trial_row(
    sweep: str,
    trial_id: str,
    result: RunResult | Mapping[str, Any] | None,
    searched: dict[str, Any] | None = None,
    status: str = "TERMINATED",
    error: str | None = None,
    started_at: Any = None,
    finished_at: Any = None,
    attempts: int | None = None,
    student_path: str | None = None,
    run_settings: str | None = None,
) -> dict[str, Any]:
    """One trials.parquet row from a trial's RunResult (or, for a failed or stopped trial, the fields known of it).

    Searched parameters become their own columns named by the dotted key.
    """
    res = _result_fields(result)
    row: dict[str, Any] = {name: res.get(name) for name in TRIAL_COLUMNS}
    row.update(sweep=sweep, trial_id=str(trial_id), status=status, error=error,
               started_at=started_at, finished_at=finished_at, attempts=attempts,
               student_path=student_path, run_settings=run_settings)
    for key, value in (searched or {}).items():
        if key in TRIAL_COLUMNS:
            raise ValueError(f"searched parameter {key!r} collides with a fixed trials column")
        row[key] = value
    return row


def trace_rows(trial_id: str, traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """traces.parquet rows for one trial; ``stage`` derived from ``episode`` (-1 = final run)."""
    out = []
    for t in traces:
        row = {name: t.get(name) for name in TRACE_COLUMNS}
        row["trial_id"] = str(trial_id)
        episode = t.get("episode", -1)
        row["episode"] = -1 if episode is None else int(episode)
        row["stage"] = int(t["stage"]) if t.get("stage") is not None else (1 if row["episode"] >= 0 else 2)
        out.append(row)
    return out


# --------------------------------------------------------------------------- value normalisation


def _timestamp(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (int, float)):
        return pd.Timestamp(v, unit="s", tz="UTC")
    ts = pd.Timestamp(v)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _normalise_trial(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("started_at", "finished_at"):
        out[key] = _timestamp(out.get(key))
    dm = out.get("dev_metrics")
    if isinstance(dm, dict):
        out["dev_metrics"] = [(str(k), float(v)) for k, v in dm.items()]
    rs = out.get("reward_shaping")
    if isinstance(rs, dict):
        out["reward_shaping"] = {f.name: rs.get(f.name) for f in REWARD_SHAPING_TYPE}
    pool = out.get("knowledge_pool")
    if pool is not None and not isinstance(pool, list):
        out["knowledge_pool"] = list(pool)
    return out


def _extra_type(values: list[Any]) -> tuple[pa.DataType, bool]:
    """Arrow type of a searched column; (string, True) means values are JSON-encoded."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return pa.float64(), False
    if all(isinstance(v, bool) for v in present):
        return pa.bool_(), False
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64(), False
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64(), False
    if all(isinstance(v, str) for v in present):
        return pa.string(), False
    return pa.string(), True  # lists, dicts, mixed types


def _to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    extras = sorted({k for r in rows for k in r} - set(schema.names))
    arrays = [pa.array([r.get(name) for r in rows], type=f.type) for name, f in zip(schema.names, schema)]
    fields = list(schema)
    for name in extras:
        values = [r.get(name) for r in rows]
        typ, as_json = _extra_type(values)
        if as_json:
            values = [None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values]
        elif typ == pa.float64():
            values = [None if v is None else float(v) for v in values]
        arrays.append(pa.array(values, type=typ))
        fields.append(pa.field(name, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- locked, atomic writes


def _lock(sweep_dir: Path) -> Any:
    return locked(sweep_dir / LOCK_FILE)


def append_trials(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Add trial rows; a trial_id already present is replaced by the new row."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / TRIALS_FILE
    with _lock(sweep_dir):
        new = [_normalise_trial(r) for r in rows]
        ids = {r["trial_id"] for r in new}
        old = [r for r in _read_rows(path) if r["trial_id"] not in ids]
        latest: dict[str, dict[str, Any]] = {}
        for r in new:  # the last row of a trial id within one call wins
            latest[r["trial_id"]] = r
        atomic_write_parquet(path, _to_table(old + list(latest.values()), TRIAL_SCHEMA))
    return path


def append_traces(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Add trace rows; every trace of a trial_id present in ``rows`` replaces that trial's old traces."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / TRACES_FILE
    with _lock(sweep_dir):
        ids = {str(r["trial_id"]) for r in rows}
        old = [r for r in _read_rows(path) if r["trial_id"] not in ids]
        atomic_write_parquet(path, _to_table(old + [dict(r) for r in rows], TRACE_SCHEMA))
    return path


def remove_trials(sweep_dir: str | Path, trial_ids: list[str]) -> int:
    """Delete these trials' rows from trials.parquet and their traces (one locked, atomic rewrite each), so a
    resumed sweep runs them again; returns how many trial rows went."""
    sweep_dir, ids = Path(sweep_dir), set(trial_ids)
    removed = 0
    with _lock(sweep_dir):
        for name, schema in ((TRIALS_FILE, TRIAL_SCHEMA), (TRACES_FILE, TRACE_SCHEMA)):
            rows = _read_rows(sweep_dir / name)
            kept = [r for r in rows if r["trial_id"] not in ids]
            if len(kept) < len(rows):
                atomic_write_parquet(sweep_dir / name, _to_table(kept, schema))
            if name == TRIALS_FILE:
                removed = len(rows) - len(kept)
    return removed


# --------------------------------------------------------------------------- reading


def mirror_to_uri(sweep_dir: str | Path, uri: str) -> list[str]:
    """Copy the sweep's Parquet files to ``uri`` (``s3://``, ``gs://``, ``file://``) with pyarrow's filesystems.

    Appends happen on a local folder (they need a lock and an atomic rename); each mirror
    replaces whole objects, and an object store's PUT is atomic, so readers of the URI never
    see half a file. Returns the destination paths written.
    """
    from pyarrow import fs as pafs

    filesystem, base = pafs.FileSystem.from_uri(uri.rstrip("/"))
    filesystem.create_dir(base, recursive=True)
    written = []
    with _lock(Path(sweep_dir)):
        for name in (TRIALS_FILE, TRACES_FILE):
            src = Path(sweep_dir) / name
            if src.is_file():
                pafs.copy_files(str(src), f"{base}/{name}", destination_filesystem=filesystem)
                written.append(f"{base}/{name}")
    return written


# the statuses of a recorded trial that a resumed grid does not run again (a STOPPED one, ended early, runs again)
FINISHED_STATUSES = ("TERMINATED", "ERROR")


def recorded_scores(sweep_dir: str, trial_id: str) -> dict[str, float] | None:
    """The search metrics (:data:`~kdray.records.SEARCH_METRICS`) of ``trial_id`` if trials.parquet already holds
    it as finished or failed, else None; a column an older file lacks is NaN.

    A resumed sweep asks this before re-running a trial that finished after Tune's last state save, and reports
    these scores to Tune in its place (every report must carry the metric the study optimises).
    """
    path = Path(sweep_dir) / TRIALS_FILE
    if "://" in sweep_dir or not path.is_file():
        return None
    present = [m for m in SEARCH_METRICS if m in pq.read_schema(path).names]
    for row in pq.read_table(path, columns=["trial_id", "status", *present]).to_pylist():
        if row["trial_id"] == trial_id and row["status"] in FINISHED_STATUSES:
            return {m: float(row[m]) if row.get(m) is not None else math.nan for m in SEARCH_METRICS}
    return None


def finished_ids(sweep_dir: str) -> set[str]:
    """The trial ids trials.parquet holds as finished or failed: the trials a resumed grid does not run again
    (:func:`recorded_scores` answers for one of them; a URI storage has no local file, so none)."""
    path = Path(sweep_dir) / TRIALS_FILE
    if "://" in sweep_dir or not path.is_file():
        return set()
    table = pq.read_table(path, columns=["trial_id", "status"]).to_pylist()
    return {str(row["trial_id"]) for row in table if row["status"] in FINISHED_STATUSES}


def kept_student(sweep_dir: str | Path, task: str) -> dict[str, Any] | None:
    """The row (``student_path``, ``dev_score``) of ``task``'s kept student: a recorded student folder that still
    exists (the recorder deletes the folders of students a better one replaced); None when there is none."""
    path = Path(sweep_dir) / TRIALS_FILE
    if not path.is_file() or "student_path" not in pq.read_schema(path).names:
        return None
    rows = pq.read_table(path, columns=["task", "student_path", "dev_score"]).to_pylist()
    alive = [r for r in rows if r["task"] == task and r["student_path"] and Path(r["student_path"]).is_dir()]
    return alive[-1] if alive else None


def recorded_ids(sweep_dir: str | Path) -> list[str]:
    """The trial ids trials.parquet holds (empty when there is no file yet)."""
    path = Path(sweep_dir) / TRIALS_FILE
    if not path.is_file():
        return []
    return [str(v) for v in pq.read_table(path, columns=["trial_id"]).column("trial_id").to_pylist()]


def find_sweep_dir(path: str | Path) -> Path:
    """The sweep folder: ``path`` itself, its trials.parquet's folder, or the one sweep below it."""
    p = Path(path)
    if p.is_file():
        return p.parent
    if (p / TRIALS_FILE).exists():
        return p
    found = sorted({f.parent for f in p.glob(f"*/{TRIALS_FILE}")}) if p.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"{p}: no {TRIALS_FILE} here or in a sub-folder")
    names = ", ".join(f.name for f in found)
    raise ValueError(f"{p}: holds several sweeps ({names}); pass one of them")


def load(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, traces) DataFrames; dev_metrics/reward_shaping become dicts, knowledge_pool lists."""
    d = find_sweep_dir(path)
    trials = pd.read_parquet(d / TRIALS_FILE)
    if "dev_metrics" in trials:
        trials["dev_metrics"] = [dict(v) if v is not None else {} for v in trials["dev_metrics"]]
    if "knowledge_pool" in trials:
        trials["knowledge_pool"] = [list(v) if v is not None else [] for v in trials["knowledge_pool"]]
    tpath = d / TRACES_FILE
    traces = pd.read_parquet(tpath) if tpath.exists() else pd.DataFrame({c: [] for c in TRACE_COLUMNS})
    return trials, traces


def scored_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials whose dev score enters a table or plot: not ERROR, with a dev score (a copy)."""
    return trials[(trials["status"] != "ERROR") & trials["dev_score"].notna()].copy()
