"""Inside a trial: the Tune function trainable and the Ray Train worker, both running :func:`kdray.distill.train`.

A one-worker trial (``resources.trainer: auto``) runs the loop in its own process and reports every evaluation
with ``tune.report``; a trial of several workers (DDP) holds ``CPU: 0.01`` and launches a ``TorchTrainer`` whose
workers run the loop and report (already all-reduced) to Tune through ``TuneReportCallback``. Either way the last
report carries the :class:`~kdray.records.RunResult` as JSON (Tune metrics must stay serialisable).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kdray.config import ConfigError, RunConfig, SweepConfig, validate
from kdray.records import SEARCH_METRICS
from kdray.results import recorded_scores
from kdray.sweep.expansion import Trial, optuna_trial
from kdray.sweep.teachers import teacher_folder, teacher_id
from kdray.tblog import trial_logdir

RECORD_KEY = "kdray_record"  # last report of a trial: the RunResult as JSON (with traces)
ERROR_KEY = "kdray_error"
RECORDED_KEY = "kdray_already_recorded"


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one Tuner shares (``tune.with_parameters`` puts it in the object store once).

    Attributes:
        sweep: the validated sweep (Optuna trials build their run from it).
        task: the Optuna study's task; None for the grid.
        trials: the grid's trials by key (Tune's config holds only their identity).
        teachers: teacher id -> folder, from the teacher stage.
        teacher_root: where a trial fine-tunes a teacher the stage did not (a searched teacher setting).
        trials_dir: each trial's output folder goes under it.
        train_storage: Ray Train's storage for multi-worker trials.
        sweep_dir: the sweep folder whose trials.parquet tells which trials already finished.
    """

    sweep: SweepConfig
    task: str | None
    trials: dict[str, Trial]
    teachers: dict[str, str]
    teacher_root: str
    trials_dir: str
    train_storage: str
    sweep_dir: str

    def resolve(self, config: dict[str, Any], tune_trial_id: str) -> Trial:
        """The typed trial behind Tune's ``config``: a grid trial by key, or an Optuna sample applied once."""
        if "trial" not in config:
            return optuna_trial(self.sweep, self.task, tune_trial_id, config)
        ident = config["trial"]
        found = self.trials.get(ident["trial_key"])
        if found is not None:
            return found
        if "run" not in ident:
            raise ConfigError(f"trial {ident['trial_key']} is no longer in the space file (it changed since the "
                              "sweep began); resume with the original file, or start a new sweep with --name")
        # a sweep begun by an earlier kdray kept each trial's whole run in Tune's config
        run = validate(RunConfig, ident["run"], f"trial {ident['trial_key']}")
        return Trial(ident["trial_key"], ident["task"], ident["seed"], ident["repeat"], ident["params"], run)


@dataclass(frozen=True)
class LoopJob:
    """One run of the loop: the trial's run (with its output folder) and its teacher."""

    key: str
    run: RunConfig
    teacher_path: str


def release_freed_memory() -> bool:
    """Hand the heap a finished trial freed back to the OS (glibc's ``malloc_trim``); False without glibc.

    Tune runs every trial of a reused trial process in a new thread, and glibc gives each thread its own malloc
    arena, so what one trial freed stayed in its arena, unused by the next: the study's two trial processes grew
    by 0.4-0.6 GB per trial, to 6.3 and 7.9 GB after 5 trials each (MRPC and STS-B, stop 23), where one run in a
    fresh process peaks at 2-2.9 GB. Trimmed after each trial, five short runs in five threads stayed at 0.6 GB
    against 2.0 GB untrimmed (``tests/test_sweep_trial.py`` holds the mechanism).
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        trim = None
    if trim is None:  # musl, macOS: their allocators return memory on their own terms
        return False
    trim(0)
    return True


def trial_fn(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable: resolve the trial, then run the loop here or launch its TorchTrainer."""
    try:
        _run_trial(config, ctx)
    finally:
        release_freed_memory()  # before the reused process takes its next trial


def _run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    from ray import tune

    trial = ctx.resolve(config, tune.get_context().get_trial_id())
    recorded = recorded_scores(ctx.sweep_dir, trial.key)
    if recorded is not None:  # finished before the driver died, after Tune's last state save: do not re-run
        tune.report({**recorded, "train_seconds": math.nan, RECORDED_KEY: 1})
        return
    run = trial.run.with_output(str(Path(ctx.trials_dir) / trial.key), progress=False,
                                tensorboard_dir=str(trial_logdir(Path(ctx.trials_dir).parent, trial.key)))
    # a searched teacher/data setting has no teacher from the stage: fine-tune (or reuse) it here, under the lock
    teacher_path = ctx.teachers.get(teacher_id(run)) or teacher_folder(run, ctx.teacher_root)
    job = LoopJob(trial.key, run, teacher_path)
    if not ctx.sweep.resources.in_trial():
        _fit_trainer(job, ctx)
        return
    try:  # one worker: this process runs the loop (no Train controller/worker processes to start)
        run_loop(job, 0, tune.report, tune.Checkpoint, tune.get_checkpoint())
    except Exception as err:  # NaN loss, OOM: the trial is recorded as ERROR, the sweep goes on
        _report_error(err)


def _report_error(err: BaseException) -> None:
    from ray import tune

    # every search metric, as NaN: Tune refuses a report without the metric its study optimises
    tune.report({**{m: math.nan for m in SEARCH_METRICS}, "train_seconds": math.nan,
                 ERROR_KEY: f"{type(err).__name__}: {err}"[:2000]})


def _fit_trainer(job: LoopJob, ctx: TrialContext) -> None:
    """Run ``job`` on a TorchTrainer of ``workers_per_trial`` workers, their reports forwarded to this trial."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    r = ctx.sweep.resources
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": job},
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=r.use_gpu,
            resources_per_worker={"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=job.key, storage_path=ctx.train_storage, callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=ctx.sweep.search.max_failures)),
    )
    try:
        trainer.fit()
    except Exception as err:  # NaN loss, OOM, a crashed worker: the trial is recorded as ERROR, the sweep goes on
        _report_error(err.__cause__ or err)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: one kdray.distill.train run, reports forwarded to Tune (rank 0's, already all-reduced)."""
    import ray.train

    run_loop(config["job"], ray.train.get_context().get_world_rank(), ray.train.report, ray.train.Checkpoint,
             ray.train.get_checkpoint())


def run_loop(job: LoopJob, rank: int, report_fn: Callable[..., None], checkpoint_cls: Any, resume: Any) -> None:
    """One kdray.distill.train run reporting every evaluation (and new checkpoints) through ``report_fn``.

    The same body serves a Ray Train worker (``ray.train.report``) and a Tune trial running the loop itself
    (``ray.tune.report``); the last report carries the run's RunResult as JSON.
    """
    from kdray.distill import train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # "Checkpoint successfully created" at every report
    ckpt_dir = Path(job.run.output_dir) / "checkpoint"

    def report(metrics: dict[str, Any]) -> None:
        # Metrics are all-reduced by the loop, so every rank takes the same branch here.
        bad = {k: metrics.get(k) for k in ("train_loss", "dev_score") if not math.isfinite(float(metrics.get(k, 0.0)))}
        if bad:
            raise FloatingPointError(f"non-finite metrics at step {metrics.get('step')}: {bad}")
        checkpoint = None
        path = ckpt_dir / "checkpoint.pt"
        if rank == 0 and path.is_file():  # the loop wrote a new one since the last report
            checkpoint = checkpoint_cls.from_directory(str(ckpt_dir))
        report_fn(_floats(metrics), checkpoint=checkpoint)
        if checkpoint is not None:  # Tune persisted its copy during the report: store each checkpoint once
            path.unlink(missing_ok=True)

    t0 = time.perf_counter()
    with resume.as_directory() if resume is not None else contextlib.nullcontext() as resume_dir:
        result = train(job.run, teacher_path=job.teacher_path, report=report, resume_from=resume_dir)
    report_fn({"dev_score": result.dev_score, "holdout_score": result.holdout_score,
               "train_seconds": result.train_seconds, "step": result.train_steps,
               "kdray_loop_seconds": time.perf_counter() - t0, RECORD_KEY: result.to_json()})


def _floats(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in metrics.items()}
