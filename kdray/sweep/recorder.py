"""Driver side: a Tune callback that appends each finished, stopped or failed trial to the sweep's Parquet files.

The trial's last report carries its :class:`~kdray.records.RunResult` as JSON; the recorder rebuilds the typed
record and writes one ``trials.parquet`` row (and its traces) as soon as Tune learns the trial ended, so an
interrupted sweep keeps every trial that finished.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kdray import results
from kdray.config import SweepConfig
from kdray.records import RunResult
from kdray.sweep.expansion import tune_identity
from kdray.sweep.trial import ERROR_KEY, RECORD_KEY, RECORDED_KEY


def trial_row(sweep_name: str, key: str, task: str | None, params: dict[str, Any], result: RunResult | None,
              last: dict[str, Any], error: str | None, started_at: str,
              finished_at: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One trials.parquet row (and its trace rows) from a trial's identity, RunResult and last Tune result.

    Status: ERROR when the trial or its last report says so, TERMINATED with a RunResult, else STOPPED (ended
    early by ASHA); a trial without a RunResult keeps what is known of it (task, last dev_score).
    """
    error = last.get(ERROR_KEY) or error
    status = "ERROR" if error else ("TERMINATED" if result is not None else "STOPPED")
    traces = results.trace_rows(key, result.traces) if result is not None else []
    known = result if result is not None else {"task": task, "dev_score": last.get("dev_score", math.nan)}
    row = results.trial_row(sweep_name, key, known, params, status=status, error=error,
                            started_at=started_at or None, finished_at=finished_at)
    return row, traces


def make_recorder(results_dir: str, sweep: SweepConfig, task: str | None, mirror_uri: str | None = None) -> Any:
    """The Tune callback of one Tuner (a grid, or one task's Optuna study) writing under ``results_dir``."""
    from ray.tune import Callback

    class ParquetRecorder(Callback):
        """Appends each finished or failed trial's row (and traces) as soon as Tune learns of it."""

        def __init__(self) -> None:
            self.started: dict[str, str] = {}

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.started[trial.trial_id] = _now()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            _record(trial, trial.last_result or {}, None, self.started.get(trial.trial_id, ""))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            _record(trial, trial.last_result or {}, _error_text(trial), self.started.get(trial.trial_id, ""))

    def _record(trial: Any, last: dict[str, Any], error: str | None, started_at: str) -> None:
        if last.get(RECORDED_KEY):
            return  # its row was written before the sweep was interrupted
        key, trial_task, params = tune_identity(sweep, trial.config, task, trial.trial_id)
        result = RunResult.from_json(last[RECORD_KEY]) if RECORD_KEY in last else None
        row, traces = trial_row(sweep.name, key, trial_task, params, result, last, error, started_at, _now())
        if traces:
            results.append_traces(results_dir, traces)
        results.append_trials(results_dir, [row])
        if mirror_uri:  # URI storage: appends stay local, the bucket gets whole files after each
            results.mirror_to_uri(results_dir, mirror_uri)
        print(f"[kdray] {row['trial_id']}: {row['status']} dev_score={row['dev_score']} "
              f"loop={last.get('kdray_loop_seconds', math.nan):.1f}s"
              + (f" error={row['error'][:200]}" if row["error"] else ""), flush=True)

    return ParquetRecorder()


def _error_text(trial: Any) -> str:
    """The last line of a failed trial's traceback (Tune keeps it in the trial's error file)."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        return lines[-1][:2000] if lines else str(path)
    except (OSError, TypeError):
        return str(path or "trial raised")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
