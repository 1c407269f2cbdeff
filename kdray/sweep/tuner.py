"""One sweep's Ray Tune Tuners: a new one, a restored one, and the trials a restored one does not hold.

A grid Tuner holds the trial identities it was started with. ``--resume`` restores it, so trials that its
interrupted trials' checkpoints resume; but a space file that gained trials since (another seed, a row, the
tasks a ``--tasks`` run left out) would not run them, and the sweep used to end reporting only the old grid as
done. After a restored grid, every trial of the file that ``trials.parquet`` does not hold runs in a new Tuner
beside it (``tune.added-<UTC time>``); the restored one keeps what it had, and later resumes restore both.
An Optuna study cannot grow either: a resume asking for more samples runs the rest in a new study that is told
every finished sample first (Optuna's warm start), so its TPE model goes on from them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kdray import results
from kdray.config import SweepConfig
from kdray.sweep.expansion import Trial, tune_space
from kdray.sweep.loggers import logger_callbacks
from kdray.sweep.recorder import backfill, make_recorder
from kdray.sweep.resources import reuse_actors, tune_resources
from kdray.sweep.trial import ERROR_KEY, TrialContext, trial_fn


def run_tuner(ctx: TrialContext, trials: list[Trial] | None, concurrent: int, resume: bool, local_dir: str) -> int:
    """One Tuner (the grid, or one task's Optuna study); after a restore, also the Tuners earlier resumes added and
    one for what the file now adds. Returns how many trials ended in ERROR. ``local_dir``: where trials.parquet is
    appended."""
    from ray import tune

    tuner_name = "tune" if ctx.task is None else f"tune_{ctx.task}"
    path = f"{ctx.sweep_dir}/{tuner_name}"
    restored = resume and tune.Tuner.can_restore(path)
    grids = [_fit(_restored(ctx, path) if restored else _new_tuner(ctx, trials, concurrent, tuner_name, local_dir),
                  ctx, local_dir)]
    if restored:  # the Tuners an earlier resume added, so that their interrupted trials resume too
        grids += [_fit(_restored(ctx, earlier), ctx, local_dir) for earlier in _added_tuners(ctx.sweep_dir, tuner_name)]
    failed = sum(_errors(g) for g in grids)
    if not restored:
        return failed
    name = f"{tuner_name}.added-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if trials is not None:
        done = results.finished_ids(local_dir)
        added = [t for t in trials if t.key not in done]
        if added:
            print(f"[kdray] {len(added)} trial(s) of the file were not in the resumed Tune state (the file gained "
                  f"them since it started): running them in {ctx.sweep_dir}/{name}", flush=True)
            failed += _errors(_fit(_new_tuner(ctx, added, concurrent, name, local_dir), ctx, local_dir))
        return failed
    ran = sum(len(g) for g in grids)
    if ran < ctx.sweep.search.num_samples:
        history = study_history(grids, ctx.sweep)
        print(f"[kdray] {path}: the resumed study ran {ran} of the {ctx.sweep.search.num_samples} samples asked for; "
              f"the rest run in {ctx.sweep_dir}/{name}, a study told the {len(history[0])} finished ones first",
              flush=True)
        grown = _new_tuner(ctx, None, concurrent, name, local_dir, history, ctx.sweep.search.num_samples - ran)
        failed += _errors(_fit(grown, ctx, local_dir))
    return failed


def study_history(grids: list[Any], sweep: SweepConfig) -> tuple[list[dict[str, Any]], list[Any]]:
    """The finished samples of restored Optuna Tuners as (points, rewards), the warm start of a grown study: its
    TPE model then starts from them, as the restored one would have gone on."""
    keys, search = list(tune_space(sweep)), sweep.search
    objectives = study_objectives(search)[0]
    points, rewards = [], []
    for result in (r for grid in grids for r in grid):
        metrics = result.metrics or {}
        if result.error is not None or metrics.get(ERROR_KEY) or any(k not in metrics for k in objectives):
            continue
        points.append({k: result.config[k] for k in keys})
        values = [float(metrics[k]) for k in objectives]
        rewards.append(values if search.multi_objective else values[0])
    return points, rewards


def _restored(ctx: TrialContext, path: str) -> Any:
    from ray import tune

    print(f"[kdray] resuming {path}", flush=True)
    return tune.Tuner.restore(path, _trainable(ctx), resume_unfinished=True, resume_errored=False,
                              restart_errored=False)


def _added_tuners(sweep_dir: str, tuner_name: str) -> list[str]:
    """The ``<tuner_name>.added-<UTC>`` Tuners earlier resumes started, oldest first (local storage only: a
    URI's are not listed, and their unfinished trials start over in a new one)."""
    from ray import tune

    if "://" in sweep_dir:
        return []
    found = sorted(Path(sweep_dir).glob(f"{tuner_name}.added-*"))
    return [str(p) for p in found if tune.Tuner.can_restore(str(p))]


def _trainable(ctx: TrialContext) -> Any:
    from ray import tune

    return tune.with_resources(tune.with_parameters(trial_fn, ctx=ctx), tune_resources(ctx.sweep))


def _fit(tuner: Any, ctx: TrialContext, local_dir: str) -> Any:
    """Run ``tuner`` and record what the driver missed; its ResultGrid."""
    sweep_dir = ctx.sweep_dir
    grid = tuner.fit()
    backfill(local_dir, ctx, grid, sweep_dir if "://" in sweep_dir else None)
    return grid


def _errors(grid: Any) -> int:
    return sum(1 for r in grid if r.error is not None or (r.metrics or {}).get(ERROR_KEY))


def _new_tuner(ctx: TrialContext, trials: list[Trial] | None, concurrent: int, name: str, local_dir: str,
               history: tuple[list[dict[str, Any]], list[Any]] | None = None, samples: int | None = None) -> Any:
    """A Tuner over ``trials`` (a grid) or a new Optuna study (``history``: finished samples it is told first;
    ``samples``: how many it runs, default ``search.num_samples``)."""
    from ray import tune

    sweep, sweep_dir = ctx.sweep, ctx.sweep_dir
    param_space, tune_config = search_config(sweep, trials, concurrent, history, samples)
    return tune.Tuner(
        _trainable(ctx), param_space=param_space, tune_config=tune_config,
        run_config=tune.RunConfig(
            name=name, storage_path=sweep_dir,
            callbacks=[make_recorder(local_dir, ctx, sweep_dir if "://" in sweep_dir else None),
                       *logger_callbacks(sweep, sweep_dir)],
            # a trial whose process or node died restarts from its last checkpoint (attempts counts them)
            failure_config=tune.FailureConfig(max_failures=sweep.search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # Tune's status tables and per-result boxes (~40 lines a trial) are off: the recorder prints one
            # line per ended trial and the sweep's summary the totals; Tune's own tensorboard line named the
            # wrong folder
            verbose=0),
    )


def search_config(sweep: SweepConfig, trials: list[Trial] | None, concurrent: int,
                  history: tuple[list[dict[str, Any]], list[Any]] | None = None,
                  samples: int | None = None) -> tuple[dict[str, Any], Any]:
    """(param_space, TuneConfig) of a new Tuner: the grid's trial identities, or a seeded Optuna TPE study
    (warm-started from ``history``'s points and rewards, running ``samples`` trials when given)."""
    from ray import tune

    search = sweep.search
    metric: Any = search.metric
    mode: Any = search.mode_direction
    scheduler = search_alg = None
    if search.scheduler.type == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=search.scheduler.grace_period,
                                  reduction_factor=search.scheduler.reduction_factor)
    if trials is not None:
        # Tune shows and stores each trial's config: its identity, not the whole run (thousands of
        # characters in every status line); the trainable finds the typed trial by its key
        param_space: dict[str, Any] = {"trial": tune.grid_search([t.identity() for t in trials])}
        num_samples = 1
    else:
        import optuna  # noqa: F401  (Tune's OptunaSearch fails vaguely without it: say so here)
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        if search.multi_objective:
            metric, mode = study_objectives(search)
        sampler = tpe_sampler(search)
        warm: dict[str, Any] = ({"points_to_evaluate": history[0], "evaluated_rewards": history[1]}
                                if history and history[0] else {})
        optuna_search = (OptunaSearch(metric=metric, mode=mode, sampler=sampler, **warm) if search.multi_objective
                         else OptunaSearch(sampler=sampler, **warm))  # single objective: metric from TuneConfig
        search_alg = ConcurrencyLimiter(optuna_search, max_concurrent=concurrent)
        param_space = tune_space(sweep)
        num_samples = samples or search.num_samples
    multi = isinstance(metric, list)
    return param_space, tune.TuneConfig(
        metric=None if multi else metric, mode=None if multi else mode,
        num_samples=num_samples, max_concurrent_trials=concurrent, search_alg=search_alg,
        scheduler=scheduler, reuse_actors=reuse_actors(sweep),
        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname)


def study_objectives(search: Any) -> tuple[list[str], list[str]]:
    """(metrics, modes) of each Optuna study: ``search.metric``, and with ``multi_objective`` ``train_seconds``
    (minimised) beside it."""
    if search.multi_objective:
        return [search.metric, "train_seconds"], [search.mode_direction, "min"]
    return [search.metric], [search.mode_direction]


def tpe_sampler(search: Any) -> Any:
    """The Optuna sampler of each task's study: TPE, seeded, after ``search.startup_trials`` random proposals."""
    import optuna

    return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup_trials)


def trial_dirname(trial: Any) -> str:
    """A Tune trial's folder and display name: its kdray key (grid) or Tune's id. Tune pickles a reference to it
    into tuner.pkl, so its module and name are part of every sweep's resumable state: keep them (kdray.sweep.run
    keeps the name sweeps started before this module existed use)."""
    key = trial.config.get("trial", {}).get("trial_key")
    return f"{key}-{trial.trial_id}" if key else f"trial-{trial.trial_id}"
