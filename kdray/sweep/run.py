"""``kdray sweep``: validate the space file, prepare teachers, run the Tuner(s), summarise.

Shape of a sweep (:func:`run_sweep`):

1. Validate the YAML (:func:`kdray.config.load_sweep_config`) and expand it into typed trials
   (:mod:`kdray.sweep.expansion`), before Ray starts. Relative paths in the file (``data.dir``, ``data.cache_dir``,
   ``teacher.finetuned.*``, ``teacher.cache_dir``, ``selector.init_from``) resolve against the YAML file's folder.
2. ``grid``: one Tuner over the explicit trials (``tune.grid_search`` over their identities). ``optuna``: one
   study per task (its own Tuner under ``<sweep>/tune_<task>``) with a seeded TPE sampler; trials run with the
   first of ``train.seeds``. Optional multi-objective: maximise ``dev_score`` and minimise ``train_seconds``.
   The Tuners, restored by ``--resume``, are :mod:`kdray.sweep.tuner`'s.
3. The teacher stage (:mod:`kdray.sweep.teachers`), then the trials (:mod:`kdray.sweep.trial`), each recorded in
   ``trials.parquet``/``traces.parquet`` as soon as it ends (:mod:`kdray.sweep.recorder`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kdray import results
from kdray.config import ConfigError, RunConfig, SweepConfig, load_sweep_config, validate
from kdray.io import LockHeld, clean_stale_temps, locked, try_locked
from kdray.sweep import reaper
from kdray.sweep.expansion import Trial, describe, expand_grid, resolve_paths
from kdray.sweep.loggers import check_logging
from kdray.sweep.preflight import check_inputs, check_writable_folder, sweep_folder
from kdray.sweep.ray_start import RayStartError, join, start_local
from kdray.sweep.settings import changed_trials, check_recorded_settings, forget_changed
from kdray.sweep.resources import QUIET_ENV, max_concurrent_trials
from kdray.sweep.teachers import teacher_root, teacher_stage
from kdray.sweep.trial import TrialContext
from kdray.sweep.tuner import run_tuner, trial_dirname
from kdray.tblog import tensorboard_command

SWEEP_LOCK = ".sweep.lock"  # held by the one driver of a sweep, fresh or resumed
# Tune pickles its TuneConfig into <sweep>/tune/tuner.pkl, naming this function by the module it lived in before
# kdray.sweep.tuner existed: the alias keeps those sweeps resumable.
_trial_dirname = trial_dirname


def run_sweep(space_path: str, address: str | None = None, storage: str | None = None, name: str | None = None,
              resume: bool = False, dry_run: bool = False, max_concurrent: int | None = None,
              num_samples: int | None = None, overrides: dict[str, Any] | None = None,
              teachers_only: bool = False, rerun_changed: bool = False, tasks: list[str] | None = None) -> int:
    """Run (or with ``dry_run`` print) the sweep in ``space_path``; returns the process exit code.

    Args:
        space_path: the search-space YAML.
        address: None = start a local Ray (dashboard off); ``auto`` or ``ray://host:port`` = connect to a cluster.
        storage: results root, a path or URI (default ``./runs``); results go under ``<storage>/<name>/``.
        name: sweep name (default: the YAML's ``name``).
        resume: continue an interrupted sweep (finished trials are not re-run; running ones resume from checkpoints).
        dry_run: print the expanded trials (grid) or the space (optuna) and exit 0 without Ray.
        max_concurrent: at most this many trials at once (default: as many as the cluster's resources fit).
        num_samples: override ``search.num_samples``.
        overrides: dotted run settings set over the file's (``--set resources.use_gpu=true``); trial keys do not
            change, so ``--resume`` with other resources continues the same sweep.
        teachers_only: fine-tune (or find) the sweep's teachers under ``storage`` and stop, without Ray: prepare
            them on one GPU box (or before a long sweep) and run the trials later with the same storage.
        rerun_changed: resume, running again the recorded grid trials whose settings differ from the file's
            (:func:`kdray.sweep.settings.forget_changed`); without it such a sweep is refused.
        tasks: run only these of the file's tasks (``--tasks``); their trials keep the keys the whole file gives
            them, so a later ``--resume`` of the whole file runs only the other tasks' trials.

    Returns:
        0 when every trial finished, 1 when some trial is recorded as ERROR, 2 for a bad configuration (found
        before Ray starts, ``dry_run`` included) or a Ray that would not start.
    """
    storage = storage or str(Path("runs").resolve())
    is_uri = "://" in storage
    if not is_uri:
        storage = str(Path(storage).expanduser().resolve())
    try:
        if max_concurrent is not None and max_concurrent < 1:
            raise ConfigError(f"--max-concurrent {max_concurrent}: must be >= 1")
        if rerun_changed and "://" in storage:
            raise ConfigError("--rerun-changed needs a local --storage (it rewrites the Parquet files there)")
        sweep = load_sweep(space_path, overrides, name, num_samples, tasks)
        trials = expand_grid(sweep, str(space_path)) if sweep.search.mode == "grid" else None
        if rerun_changed and trials is None:
            raise ConfigError(f"{space_path}: --rerun-changed applies to grid sweeps (an Optuna trial's key is its "
                              "Tune id, so nothing recorded matches the file's trials)")
        preflight(sweep, trials, storage, is_uri, resume or rerun_changed or teachers_only, rerun_changed)
        check_logging(sweep)
        if address is None:  # trials run on this machine: say now if its CPU cannot run their precision well
            check_local_precision(sweep, trials)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    if dry_run:
        print(describe(sweep, trials))
        if rerun_changed and trials is not None:
            changed = sorted(changed_trials(results_dir(sweep_folder(storage, sweep.name), sweep.name), trials))
            print(f"--rerun-changed would run {len(changed)} recorded trial(s) again: {', '.join(changed) or '-'}")
        return 0
    if teachers_only:
        t0 = time.time()
        root = teacher_root(sweep, storage, is_uri)
        found = teacher_stage(sweep, stage_runs(sweep, trials), root, local=True)
        print(f"[kdray] {len(found)} teacher(s) ready under {root} ({time.time() - t0:.1f}s)", flush=True)
        return 0
    return _on_ray(sweep, trials, storage, is_uri, address, resume or rerun_changed, max_concurrent, rerun_changed)


def load_sweep(space_path: str, overrides: dict[str, Any] | None, name: str | None,
               num_samples: int | None, tasks: list[str] | None = None) -> SweepConfig:
    """The validated sweep with the command line's name, sample count and tasks, its paths made absolute."""
    sweep = load_sweep_config(space_path, overrides)
    refuse_searched_overrides(sweep, overrides or {}, space_path)
    if tasks is not None:
        sweep = only_tasks(sweep, tasks, space_path)
    if num_samples is not None:
        if num_samples < 1:
            raise ConfigError(f"--num-samples {num_samples}: must be >= 1")
        sweep = sweep.model_copy(update={"search": sweep.search.model_copy(update={"num_samples": num_samples})})
    if name is not None:
        sweep = validate(SweepConfig, {**sweep.model_dump(), "name": name}, f"--name {name}")
    if sweep.search.mode == "optuna" and sweep.search.multi_objective and sweep.search.scheduler.type == "asha":
        raise ConfigError(f"{space_path}: search.scheduler.type: asha needs one objective; "
                          f"set search.multi_objective: false or scheduler type none")
    return resolve_paths(sweep, Path(space_path).resolve().parent)


def only_tasks(sweep: SweepConfig, tasks: list[str], space_path: str) -> SweepConfig:
    """The sweep restricted to ``tasks`` (each one of the file's, in the file's order), with their overrides."""
    unknown = [t for t in tasks if t not in sweep.tasks]
    if unknown or not tasks:
        what = f"--tasks {','.join(unknown)}: not one of {space_path}'s tasks" if unknown else "--tasks: no task named"
        raise ConfigError(f"{what}; allowed: {', '.join(sweep.tasks)}")
    keep = [t for t in sweep.tasks if t in tasks]
    overrides = {t: v for t, v in sweep.task_overrides.items() if t in keep}
    return validate(SweepConfig, {**sweep.model_dump(), "tasks": keep, "task_overrides": overrides},
                    f"--tasks {','.join(tasks)}")


def refuse_searched_overrides(sweep: SweepConfig, overrides: dict[str, Any], space_path: str) -> None:
    """``--set`` of a key the space also searches would be silently overridden by every trial: refuse it."""
    searched = set(sweep.search.space)
    for key in overrides:
        for other in searched:  # selector.name vs a searched `selector` (or the reverse) clash too
            if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                raise ConfigError(f"--set {key}: {space_path} searches {other} (search.space), so every trial "
                                  f"sets it; change the space file's values instead")


def preflight(sweep: SweepConfig, trials: list[Trial] | None, storage: str, is_uri: bool, resume: bool,
              rerun_changed: bool = False) -> None:
    """Everything a sweep can be refused for before Ray starts: storage, models, GLUE folders, paths, and a
    fresh run over a sweep that exists (it needs --resume or another --name; ``resume`` skips that check, as
    does --teachers-only, which runs no Tuner), and recorded grid trials that ran with other settings than the
    file now gives them (:func:`kdray.sweep.settings.check_recorded_settings`; ``rerun_changed`` runs them again
    instead)."""
    sweep_dir = sweep_folder(storage, sweep.name)
    local_dir = results_dir(sweep_dir, sweep.name)
    check_writable_folder(local_dir, "--storage" if not is_uri else "the local results folder")
    check_inputs(sweep, stage_runs(sweep, trials))
    if trials is not None and not rerun_changed:  # an Optuna trial's key is its Tune id: nothing to match
        check_recorded_settings(local_dir, trials, sweep.name)
    if not resume and not is_uri:
        names = ["tune"] if sweep.search.mode == "grid" else [f"tune_{task}" for task in sweep.tasks]
        for tuner in names:
            if (Path(sweep_dir) / tuner / "tuner.pkl").exists():
                raise ConfigError(f"{sweep_dir}/{tuner} already holds this sweep; pass --resume to continue it "
                                  "or --name NEW")


def stage_runs(sweep: SweepConfig, trials: list[Trial] | None) -> list[RunConfig]:
    """The runs whose teachers the teacher stage prepares: every grid trial's, or each task's base run."""
    if trials is not None:
        return [t.run for t in trials]
    return [sweep.trial_run(task, {"train.seed": sweep.train.seeds[0]}, f"task {task}") for task in sweep.tasks]


def check_local_precision(sweep: SweepConfig, trials: list[Trial] | None) -> None:
    """Before Ray starts on this machine: print that the runs' bf16 would crawl on its CPU, and refuse an int8
    teacher its torch cannot run (GPU runs are exempt from both; int8 is refused for them by the config)."""
    if sweep.resources.use_gpu:
        return
    import torch

    from kdray.teacher_precision import int8_unavailable
    from kdray.training import slow_bf16_warning

    trains = [r.train for r in stage_runs(sweep, trials)]
    unavailable = int8_unavailable() if any(tc.teacher_precision == "int8" for tc in trains) else None
    if unavailable:
        raise ConfigError(unavailable)
    warning = slow_bf16_warning(trains, torch.device("cpu"))
    if warning:
        print(warning, file=sys.stderr, flush=True)


def unfinished(trials: list[Trial] | None, sweep_dir: str) -> list[Trial] | None:
    """The grid trials a resumed sweep still runs: a task whose every trial is recorded needs no teacher (on a
    fresh machine that saves its fine-tune); None (an Optuna sweep) stays None."""
    if trials is None:
        return None
    done = results.finished_ids(sweep_dir)
    left = [t for t in trials if t.key not in done]
    if len(left) < len(trials):
        print(f"[kdray] {len(trials) - len(left)} of {len(trials)} trial(s) already recorded: "
              "they are not run again, and only the others' teachers are prepared", flush=True)
    return left


def _on_ray(sweep: SweepConfig, trials: list[Trial] | None, storage: str, is_uri: bool, address: str | None,
            resume: bool, max_concurrent: int | None, rerun_changed: bool = False) -> int:
    """Take the sweep's lock, start (or join) Ray, run the sweep; the exit code of :func:`run_sweep`."""
    sweep_dir = sweep_folder(storage, sweep.name)
    local_dir = Path(results_dir(sweep_dir, sweep.name))
    try:
        with try_locked(local_dir / SWEEP_LOCK):
            return _locked_run(sweep, trials, storage, is_uri, address, resume, max_concurrent, rerun_changed)
    except LockHeld:
        print(f"another kdray sweep is running {local_dir} (it holds {SWEEP_LOCK}); wait for it to end, or "
              "use another --name", file=sys.stderr)
        return 2


def _locked_run(sweep: SweepConfig, trials: list[Trial] | None, storage: str, is_uri: bool, address: str | None,
                resume: bool, max_concurrent: int | None, rerun_changed: bool = False) -> int:
    """The sweep under its lock: clean what a killed run left, start Ray, prepare teachers, run each Tuner."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    sweep_dir = sweep_folder(storage, sweep.name)
    local_dir = results_dir(sweep_dir, sweep.name)
    pidfile = Path(local_dir) / reaper.PIDFILE
    with locked(Path(local_dir) / results.LOCK_FILE):  # no trial of this sweep runs: the sweep lock is ours
        stale = clean_stale_temps(local_dir, recursive=True)
    left = reaper.reap_leftovers(pidfile)
    if stale or left:
        print(f"[kdray] cleaned up after a killed run: {len(stale)} temp file(s), {len(left)} process(es)",
              flush=True)
    if rerun_changed and trials is not None:
        forget_changed(local_dir, trials)
    watchdog = None
    try:
        if address is None:
            watchdog = reaper.start_watchdog(pidfile)
            start_local(sweep)
        else:
            join(address)
    except RayStartError as err:
        reaper.stop_watchdog(watchdog, pidfile)
        print(str(err), file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        failed = _run_tuners(sweep, trials, storage, is_uri, address, resume, max_concurrent)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    finally:
        if address is None:
            ray.shutdown()
            reaper.stop_watchdog(watchdog, pidfile)
    _summary(sweep, sweep_dir, time.time() - t0)
    return 1 if failed else 0


def _run_tuners(sweep: SweepConfig, trials: list[Trial] | None, storage: str, is_uri: bool, address: str | None,
                resume: bool, max_concurrent: int | None) -> int:
    """The teacher stage, then each Tuner (the grid, or one Optuna study per task); how many trials ERRORed."""
    import ray

    sweep_dir = sweep_folder(storage, sweep.name)
    concurrent = max_concurrent_trials(sweep, ray.cluster_resources(), max_concurrent)
    root = teacher_root(sweep, storage, is_uri)
    teachers = teacher_stage(sweep, stage_runs(sweep, unfinished(trials, sweep_dir)), root, local=address is None)
    trials_dir = (f"{sweep_dir}/trials" if not is_uri
                  else str(Path(tempfile.gettempdir()) / "kdray_trials" / sweep.name))
    print(f"[kdray] watch it: {tensorboard_command(Path(trials_dir).parent)}", flush=True)
    failed = 0
    for task in [None] if trials is not None else sweep.tasks:
        ctx = TrialContext(sweep, task, {t.key: t for t in trials or []}, teachers, root, trials_dir,
                           f"{sweep_dir}/train", sweep_dir)
        failed += run_tuner(ctx, trials, concurrent, resume, local_dir=results_dir(sweep_dir, sweep.name))
    return failed


def results_dir(sweep_dir: str, name: str) -> str:
    """Where the Parquet files are appended: the sweep folder, or ./runs/<name> when storage is a URI
    (appends need a local lock and rename; the recorder mirrors whole files to the URI after each)."""
    return sweep_dir if "://" not in sweep_dir else str(Path("runs", name).resolve())


def _summary(sweep: SweepConfig, sweep_dir: str, seconds: float) -> None:
    if "://" in sweep_dir:
        print(f"[kdray] Parquet files mirrored to {sweep_dir}/ after every trial")
    sweep_dir = results_dir(sweep_dir, sweep.name)
    try:
        from kdray.results import load

        trials, _ = load(sweep_dir)
    except Exception as err:  # the summary is a convenience; the Parquet files are the record
        print(f"[kdray] sweep {sweep.name} done in {seconds:.0f}s; results under {sweep_dir} ({err})")
        return
    ok = trials[trials["status"] == "TERMINATED"]
    print(f"[kdray] sweep {sweep.name}: {len(trials)} trials ({len(ok)} finished, "
          f"{int((trials['status'] == 'ERROR').sum())} errors) in {seconds:.0f}s")
    if len(ok):
        metric = sweep.search.metric if sweep.search.metric in ok else "dev_score"  # the study's objective
        best = ok.sort_values(metric, ascending=sweep.search.mode_direction == "min").iloc[0]
        print(f"[kdray] best: {best['trial_id']} {best['task']} {metric}={best[metric]:.4f} "
              f"method={best['method']}")
    print(f"[kdray] results: {sweep_dir}/trials.parquet, {sweep_dir}/traces.parquet")
