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
from kdray.checkpoint import load as load_checkpoint
from kdray.config import ConfigError, RunConfig
from kdray.export import STUDENT_FOLDER, keep_best_student
from kdray.io import atomic_torch_save
from kdray.records import RunResult
from kdray.registry import method_name
from kdray.sweep.expansion import tune_identity
from kdray.sweep.settings import settings_json
from kdray.sweep.trial import ERROR_KEY, RECORD_KEY, RECORDED_KEY, TrialContext

STUDENTS_DIR = "students"  # <sweep>/students/<trial key>: the best student of each task (save_pretrained)
OPTIMIZER_KEYS = ("optimizer", "scheduler", "scaler")  # dropped from a finished trial's checkpoint


def trial_row(sweep_name: str, key: str, task: str | None, params: dict[str, Any], result: RunResult | None,
              last: dict[str, Any], error: str | None, started_at: str, finished_at: str,
              run: RunConfig | None = None, attempts: int | None = None,
              student_path: str | None = None, settings: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One trials.parquet row (and its trace rows) from a trial's identity, RunResult and last Tune result.

    Status: ERROR when the trial or its last report says so, TERMINATED with a RunResult, else STOPPED (ended
    early by ASHA). A trial without a RunResult keeps what is known of it: its task and last dev_score, and
    from its ``run`` the seed, method, action, pool and phase length (so the report's footnotes can name it).
    """
    error = last.get(ERROR_KEY) or error
    status = "ERROR" if error else ("TERMINATED" if result is not None else "STOPPED")
    traces = results.trace_rows(key, result.traces) if result is not None else []
    known = result if result is not None else {"task": task, "dev_score": last.get("dev_score", math.nan),
                                               **(_run_fields(run) if run is not None else {})}
    row = results.trial_row(sweep_name, key, known, params, status=status, error=error,
                            started_at=started_at or None, finished_at=finished_at, attempts=attempts,
                            student_path=student_path if status == "TERMINATED" else None,
                            run_settings=settings)
    return row, traces


def _run_fields(run: RunConfig) -> dict[str, Any]:
    """What a trial's settings say about it before any result: the columns an ERROR row keeps."""
    return {"task": run.task, "seed": run.train.seed, "method": method_name(run.selector.name, run.selector.action),
            "action": run.selector.action, "knowledge_pool": list(run.knowledge.pool),
            "phase_steps": run.selector.phase_steps}


def make_recorder(results_dir: str, ctx: TrialContext, mirror_uri: str | None = None) -> Any:
    """The Tune callback of one Tuner (a grid, or one task's Optuna study) writing under ``results_dir``."""
    from ray.tune import Callback

    class ParquetRecorder(Callback):
        """Appends each finished or failed trial's row (and traces) as soon as Tune learns of it."""

        def __init__(self) -> None:
            self.started: dict[str, str] = {}

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.started[trial.trial_id] = _now()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            record(results_dir, ctx, mirror_uri, trial.config, trial.trial_id, trial.last_result or {}, None,
                   self.started.get(trial.trial_id, ""), trial.num_failures + 1)
            drop_optimizer_state(getattr(trial, "checkpoint", None))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            record(results_dir, ctx, mirror_uri, trial.config, trial.trial_id, trial.last_result or {},
                   _error_text(trial), self.started.get(trial.trial_id, ""), trial.num_failures + 1)

    return ParquetRecorder()


def record(results_dir: str, ctx: TrialContext, mirror_uri: str | None, config: dict[str, Any], tune_trial_id: str,
           last: dict[str, Any], error: str | None, started_at: str, attempts: int | None) -> None:
    """Append one ended trial's row and traces (and mirror them to a URI storage)."""
    if last.get(RECORDED_KEY):
        return  # its row was written before the sweep was interrupted
    sweep = ctx.sweep
    key, trial_task, params = tune_identity(sweep, config, ctx.task, tune_trial_id)
    result = RunResult.from_json(last[RECORD_KEY]) if RECORD_KEY in last else None
    try:
        run = ctx.resolve(config, tune_trial_id).run
    except (ConfigError, ValueError, KeyError):
        run = None  # a trial no longer in the space file: keep what Tune knows of it
    student = None
    if result is not None and not (last.get(ERROR_KEY) or error):
        student = keep_best_student(Path(ctx.trials_dir) / key / STUDENT_FOLDER, result.dev_score,
                                    results.kept_student(results_dir, result.task),
                                    Path(results_dir) / STUDENTS_DIR, sweep.search.mode_direction != "min")
    row, traces = trial_row(sweep.name, key, trial_task, params, result, last, error, started_at, _now(),
                            run if result is None else None, attempts, student,
                            settings_json(run) if run is not None else None)
    if traces:
        results.append_traces(results_dir, traces)
    results.append_trials(results_dir, [row])
    if mirror_uri:  # URI storage: appends stay local, the bucket gets whole files after each
        results.mirror_to_uri(results_dir, mirror_uri)
    print(f"[kdray] {row['trial_id']}: {row['status']} dev_score={row['dev_score']} "
          f"loop={last.get('kdray_loop_seconds', math.nan):.1f}s"
          + (f" attempts={attempts}" if attempts and attempts > 1 else "")
          + (f" error={row['error'][:200]}" if row["error"] else ""), flush=True)


def drop_optimizer_state(checkpoint: Any) -> None:
    """Rewrite a finished trial's last Tune checkpoint without optimizer, scheduler and scaler state: nothing
    resumes a finished trial (its student is saved apart), so only the weights and the record are kept."""
    path = None if checkpoint is None else Path(str(getattr(checkpoint, "path", ""))) / "checkpoint.pt"
    if path is None or "://" in str(getattr(checkpoint, "path", "")) or not path.is_file():
        return  # URI storage: the copy in the bucket stays as Tune wrote it
    state = load_checkpoint(path)
    if any(k in state for k in OPTIMIZER_KEYS):
        atomic_torch_save({k: v for k, v in state.items() if k not in OPTIMIZER_KEYS}, path)


def backfill(results_dir: str, ctx: TrialContext, grid: Any, mirror_uri: str | None = None) -> int:
    """Record the trials of a finished Tuner that trials.parquet lacks (a driver killed while writing a row,
    after Tune saved the trial as ended); returns how many rows were added."""
    recorded = set(results.recorded_ids(results_dir))
    added = 0
    for result in grid:
        metrics = result.metrics or {}
        config, tune_trial_id = metrics.get("config") or {}, metrics.get("trial_id")
        if not tune_trial_id or not (RECORD_KEY in metrics or ERROR_KEY in metrics or result.error is not None):
            continue
        key, _, _ = tune_identity(ctx.sweep, config, ctx.task, tune_trial_id)
        if key not in recorded:
            error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:2000]
            record(results_dir, ctx, mirror_uri, config, tune_trial_id, metrics, error, "", None)
            added += 1
    return added


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
