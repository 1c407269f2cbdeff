"""Ray Tune + Ray Train wiring: one search-space YAML -> trials -> Parquet rows.

Shape of a sweep (``run_sweep``):

1. Validate the YAML (:func:`kdray.config.load_sweep_config`) and expand it, before Ray starts. Relative paths
   in the file (``data.dir``, ``data.cache_dir``, ``teacher.finetuned.*``, ``teacher.cache_dir``,
   ``selector.init_from``) resolve against the YAML file's folder, so a space file works from any cwd.
2. ``grid``: the Cartesian product of every ``grid``/``choice`` list x tasks x ``train.seeds`` x
   ``search.num_samples`` repeats becomes an explicit list of trial configs (``tune.grid_search`` over them).
   ``optuna``: one study per task (its own Tuner under ``<sweep>/tune_<task>``) with a seeded TPE sampler;
   trials run with the first of ``train.seeds`` (seed repeats of the best configs are a grid sweep).
   Optional multi-objective: maximise ``dev_score`` and minimise ``train_seconds``.
3. Teacher stage: each distinct (teacher, task, teacher.seed, data, max length) is fine-tuned once by
   :func:`kdray.teacher.get_teacher` with the cache under ``<storage>/teachers`` (shared by sweeps of the same
   storage), in the driver for local Ray and as a Ray task (with the trial's GPUs) on a cluster.
4. Each trial is a Tune function trainable. A one-worker trial (``resources.trainer: auto``) runs
   :func:`kdray.distill.train` in its own process and reports every evaluation with ``tune.report``; a trial
   of several workers (DDP) holds ``CPU: 0.01`` and launches a ``TorchTrainer`` whose workers run the loop and
   report (already all-reduced) to Tune through ``TuneReportCallback``. Either way the last report carries the
   run record and traces, and a driver-side Tune callback appends each finished (or failed) trial to
   ``trials.parquet``/``traces.parquet`` at once.

Resource plan: a trial = its ``workers_per_trial`` x (``cpus_per_worker`` CPUs, ``gpus_per_worker`` GPUs), plus
a 0.01-CPU trial driver when Ray Train runs the workers. ``max_concurrent_trials`` = how many such trials fit
the cluster's CPUs and GPUs, so trial drivers never hold resources their own workers wait for. Local Ray gets
one spare logical CPU for the (idle) trial drivers.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from kdray.config import (
    ConfigError,
    Distribution,
    SweepConfig,
    apply_overrides,
    flatten_overrides,
    load_sweep_config,
    run_config_from_dict,
)

TRIAL_DRIVER_CPU = 0.01  # a Tune trial that launches a TorchTrainer only waits on it
RECORD_KEY = "kdray_record"  # last report of a trial: the JSON run record (with traces)
ERROR_KEY = "kdray_error"
RECORDED_KEY = "kdray_already_recorded"
ENV_PREFIXES = ("HF_", "KDRAY_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_", "MKL_")
QUIET_ENV = {
    "RAY_DEDUP_LOGS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "1",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


# --------------------------------------------------------------------------- expansion (no Ray)


def resolve_paths(sweep: SweepConfig, base: Path) -> SweepConfig:
    """Make the file's relative paths absolute against ``base`` (the YAML's folder)."""

    def fix(value: str | None) -> str | None:
        if not value or "://" in value or Path(value).is_absolute():
            return value
        return str((base / value).resolve())

    sweep.data.dir = fix(sweep.data.dir)
    sweep.data.cache_dir = fix(sweep.data.cache_dir)
    sweep.teacher.cache_dir = fix(sweep.teacher.cache_dir)
    sweep.teacher.finetuned = {k: fix(v) or v for k, v in sweep.teacher.finetuned.items()}
    sweep.selector.init_from = fix(sweep.selector.init_from)
    return sweep


def _short_hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _grid_values(key: str, dist: Distribution, source: str) -> list[Any]:
    if dist.kind in ("grid", "choice"):
        return list(dist.grid if dist.grid is not None else dist.choice)  # type: ignore[arg-type]
    raise ConfigError(f"{source}: search.space.{key}: {dist.kind} has no finite values for search.mode grid; "
                      f"use grid/choice lists, or search.mode optuna")


def expand_grid(sweep: SweepConfig, source: str = "<sweep>") -> list[dict[str, Any]]:
    """Every trial of a grid sweep: ``{"trial_key", "task", "params", "run"}`` with ``run`` a full RunConfig dict.

    ``trial_key`` hashes task, seed, searched values and the repeat index: the same YAML gives the same keys, which
    is what lets ``--resume`` and the Parquet de-duplication recognise a trial.
    """
    keys = list(sweep.search.space)
    value_lists = [_grid_values(k, sweep.search.space[k], source) for k in keys]
    trials = []
    for task in sweep.tasks:
        for combo in itertools.product(*value_lists):
            params = flatten_overrides(dict(zip(keys, combo)))
            for seed in sweep.train.seeds:
                for repeat in range(sweep.search.num_samples):
                    run = apply_overrides(sweep.base_run(task), {**params, "train.seed": seed}, source=source)
                    run_config_from_dict(run, f"{source}: trial {task} seed={seed} {params}")
                    ident = {"task": task, "seed": seed, "params": params, "repeat": repeat}
                    key = f"{sweep.name}-{task}-s{seed}-{_short_hash(ident)}"
                    trials.append({"trial_key": key, "task": task, "seed": seed, "repeat": repeat,
                                   "params": params, "run": run})
    return trials


def _tune_space(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, dist in sweep.search.space.items():
        if dist.choice is not None or dist.grid is not None:
            values = list(dist.choice if dist.choice is not None else dist.grid)  # type: ignore[arg-type]
            # Optuna categoricals hold scalars only: lists (e.g. knowledge.pool) are chosen by index.
            space[key] = tune.choice(values if all(_scalar(v) for v in values) else list(range(len(values))))
        elif dist.uniform is not None:
            space[key] = tune.uniform(*dist.uniform)
        elif dist.loguniform is not None:
            space[key] = tune.loguniform(*dist.loguniform)
        else:
            low, high = dist.int  # type: ignore[misc]
            space[key] = tune.randint(low, high + 1)  # inclusive upper bound, as written in the YAML
    return space


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _decode_params_space(space: dict[str, Distribution], sampled: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, dist in space.items():
        value = sampled[key]
        values = dist.choice if dist.choice is not None else dist.grid
        if values is not None and not all(_scalar(v) for v in values):
            value = values[int(value)]
        out[key] = value
    return out


def describe(sweep: SweepConfig, trials: list[dict[str, Any]] | None) -> str:
    """What ``--dry-run`` prints."""
    lines = [f"sweep {sweep.name}: mode={sweep.search.mode} tasks={sweep.tasks} seeds={sweep.train.seeds} "
             f"metric={sweep.search.metric} ({sweep.search.mode_direction})"]
    if trials is not None:
        lines.append(f"{len(trials)} trials")
        for t in trials:
            params = " ".join(f"{k}={v}" for k, v in t["params"].items())
            lines.append(f"  {t['trial_key']}  task={t['task']} seed={t['seed']} repeat={t['repeat']} {params}")
    else:
        lines.append(f"optuna (TPE, seed {sweep.search.seed}): {sweep.search.num_samples} trials per task, "
                     f"one study per task, seed {sweep.train.seeds[0]}"
                     + (", objectives dev_score max + train_seconds min" if sweep.search.multi_objective else ""))
        for key, dist in sweep.search.space.items():
            lines.append(f"  {key}: {dist.kind} {getattr(dist, dist.kind)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- resources


def trial_resources(sweep: SweepConfig) -> dict[str, float]:
    """CPUs and GPUs one trial holds in total (its driver plus its Train workers, or itself when it runs the loop)."""
    r = sweep.resources
    driver = 0.0 if r.in_trial() else TRIAL_DRIVER_CPU
    return {"CPU": driver + r.workers_per_trial * r.cpus_per_worker,
            "GPU": r.workers_per_trial * r.gpus_per_worker if r.use_gpu else 0.0}


def _tune_resources(sweep: SweepConfig) -> dict[str, float]:
    """What the Tune trial itself asks for: everything when it runs the loop, else a sliver (Train holds the rest)."""
    if not sweep.resources.in_trial():
        return {"CPU": TRIAL_DRIVER_CPU}
    need = trial_resources(sweep)
    return {"CPU": need["CPU"], **({"GPU": need["GPU"]} if need["GPU"] else {})}


def max_concurrent_trials(sweep: SweepConfig, cluster: dict[str, float], cap: int | None = None) -> int:
    """How many trials fit ``cluster`` (``ray.cluster_resources()``) at once; ConfigError when not even one."""
    need = trial_resources(sweep)
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    n = min(fits) if fits else 1
    if n < 1:
        raise ConfigError(f"resources: a trial needs {need} but the Ray cluster has "
                          f"CPU={cluster.get('CPU', 0)} GPU={cluster.get('GPU', 0)}; lower "
                          f"resources.workers_per_trial/cpus_per_worker/gpus_per_worker or use_gpu")
    return min(n, cap) if cap else n


def _local_num_cpus(sweep: SweepConfig) -> int:
    r = sweep.resources
    # Logical CPUs: enough for one trial's workers, plus one spare for the mostly idle trial drivers.
    return max(os.cpu_count() or 1, math.ceil(r.workers_per_trial * r.cpus_per_worker)) + 1


def _worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in ("TOKENIZERS_PARALLELISM",)}


# --------------------------------------------------------------------------- inside a trial


def _train_loop(cfg: dict[str, Any]) -> None:
    """Ray Train worker: one kdray.distill.train run, reports forwarded to Tune (rank 0's, already all-reduced)."""
    import ray.train

    _run_loop(cfg, ray.train.get_context().get_world_rank(), ray.train.report, ray.train.Checkpoint,
              ray.train.get_checkpoint())


def _run_loop(cfg: dict[str, Any], rank: int, report_fn: Callable[..., None], checkpoint_cls: Any,
              resume: Any) -> None:
    """One kdray.distill.train run reporting every evaluation (and new checkpoints) through ``report_fn``.

    The same body serves a Ray Train worker (``ray.train.report``) and a Tune trial running the loop itself
    (``ray.tune.report``); the last report carries the run record and traces.
    """
    from kdray.distill import train

    config = run_config_from_dict(cfg["run"], f"trial {cfg['trial_id']}")
    ckpt_dir = Path(config.output_dir) / "checkpoint"
    seen = {"mtime": None}

    def report(metrics: dict[str, Any]) -> None:
        # Metrics are all-reduced by the loop, so every rank takes the same branch here.
        bad = {k: metrics.get(k) for k in ("train_loss", "dev_score") if not math.isfinite(float(metrics.get(k, 0.0)))}
        if bad:
            raise FloatingPointError(f"non-finite metrics at step {metrics.get('step')}: {bad}")
        checkpoint = None
        path = ckpt_dir / "checkpoint.pt"
        if rank == 0 and path.is_file() and path.stat().st_mtime != seen["mtime"]:
            seen["mtime"] = path.stat().st_mtime  # upload a checkpoint only when the loop wrote a new one
            checkpoint = checkpoint_cls.from_directory(str(ckpt_dir))
        report_fn(_finite(metrics), checkpoint=checkpoint)

    t0 = time.perf_counter()
    with resume.as_directory() if resume is not None else _nullcontext() as resume_dir:
        result = train(config, teacher_path=cfg["teacher_path"], report=report, resume_from=resume_dir)
    record = {**result.record(), "traces": result.traces}
    report_fn({"dev_score": result.dev_score, "train_seconds": result.train_seconds,
                      "step": result.train_steps, "kdray_loop_seconds": time.perf_counter() - t0, RECORD_KEY: json.dumps(record, default=float)})


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in metrics.items()}


def trial_identity(sweep_name: str, config: dict[str, Any], ctx_task: str | None, tune_trial_id: str,
                   space: dict[str, Distribution]) -> tuple[str, dict[str, Any]]:
    """(trial_id, searched values): the grid's config hash, or the Tune trial id (persisted through restore)."""
    if "trial" in config:
        return config["trial"]["trial_key"], config["trial"]["params"]
    sweep_params = _decode_params_space(space, {k: config[k] for k in space})
    return f"{sweep_name}-{ctx_task}-{tune_trial_id}", sweep_params


def _trial_fn(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """The Tune function trainable: builds the trial's run and launches its TorchTrainer."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    sweep = SweepConfig.model_validate(ctx["sweep"])
    trial_id, params = trial_identity(sweep.name, config, ctx["task"], tune.get_context().get_trial_id(),
                                      sweep.search.space)
    if "trial" in config:  # grid: an explicit trial, its run looked up by key (kept out of Tune's config)
        found = ctx["runs"].get(trial_id) or config["trial"].get("run")  # "run" inside: begun by an earlier kdray
        if found is None:
            raise ConfigError(f"trial {trial_id} is no longer in the space file (it changed since the sweep began); "
                              "resume with the original file, or start a new sweep with --name")
        run = copy.deepcopy(found)
    else:  # optuna: sampled values over the task's base run
        run = apply_overrides(sweep.base_run(ctx["task"]), {**params, "train.seed": sweep.train.seeds[0]})
    recorded = _recorded(ctx["sweep_dir"], trial_id)
    if recorded is not None:  # finished before the driver died, after Tune's last state save: do not re-run
        tune.report({"dev_score": recorded, "train_seconds": math.nan, RECORDED_KEY: 1})
        return
    run["output_dir"] = str(Path(ctx["trials_dir"]) / trial_id)
    run["train"]["progress"] = False
    teacher_path = ctx["teachers"].get(_teacher_id(run))
    if teacher_path is None:  # a searched teacher/data setting: fine-tune (or reuse) it here, under the lock
        from kdray.teacher import get_teacher

        teacher_path = str(get_teacher(run["task"], run_config_from_dict(run), ctx["teacher_root"]).path)
    r = sweep.resources
    loop_config = {"run": run, "trial_id": trial_id, "teacher_path": teacher_path}
    if r.in_trial():  # one worker: this process runs the loop (no Train controller/worker processes to start)
        try:
            _run_loop(loop_config, 0, tune.report, tune.Checkpoint, tune.get_checkpoint())
        except Exception as err:  # NaN loss, OOM: the trial is recorded as ERROR, the sweep goes on
            tune.report({"dev_score": math.nan, "train_seconds": math.nan,
                         ERROR_KEY: f"{type(err).__name__}: {err}"[:2000]})
        return
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=r.use_gpu,
            resources_per_worker={"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=trial_id, storage_path=ctx["train_storage"], callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=sweep.search.max_failures)),
    )
    try:
        trainer.fit()
    except Exception as err:  # NaN loss, OOM, a crashed worker: the trial is recorded as ERROR, the sweep goes on
        cause = err.__cause__ or err
        tune.report({"dev_score": math.nan, "train_seconds": math.nan,
                     ERROR_KEY: f"{type(cause).__name__}: {cause}"[:2000]})


def _recorded(sweep_dir: str, trial_id: str) -> float | None:
    """dev_score of ``trial_id`` if trials.parquet already holds it as finished or failed, else None."""
    path = Path(sweep_dir) / "trials.parquet"
    if "://" in sweep_dir or not path.is_file():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["trial_id", "status", "dev_score"]).to_pylist()
    for row in table:
        if row["trial_id"] == trial_id and row["status"] in ("TERMINATED", "ERROR"):
            return float(row["dev_score"]) if row["dev_score"] is not None else math.nan
    return None


def _trial_dirname(trial: Any) -> str:
    key = trial.config.get("trial", {}).get("trial_key")
    return f"{key}-{trial.trial_id}" if key else f"trial-{trial.trial_id}"


def _teacher_id(run: dict[str, Any]) -> str:
    return _short_hash({"task": run["task"], "teacher": run["teacher"], "data": run["data"],
                        "max_seq_length": run["train"]["max_seq_length"]})


# --------------------------------------------------------------------------- recording (driver side)


def _make_recorder(sweep_dir: str, sweep: SweepConfig, task: str | None, mirror_uri: str | None = None) -> Any:
    from ray.tune import Callback

    class ParquetRecorder(Callback):
        """Appends each finished or failed trial's row (and traces) as soon as Tune learns of it."""

        def __init__(self) -> None:
            self.sweep_dir, self.sweep_name, self.task = sweep_dir, sweep.name, task
            self.mirror_uri = mirror_uri
            self.space = sweep.search.space
            self.started: dict[str, str] = {}

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.started[trial.trial_id] = _now()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._write(trial, trial.last_result or {}, None)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._write(trial, trial.last_result or {}, _error_text(trial))

        def _write(self, trial: Any, last: dict[str, Any], error: str | None) -> None:
            from kdray import results

            if last.get(RECORDED_KEY):
                return  # its row was written before the sweep was interrupted

            trial_id, params = trial_identity(self.sweep_name, trial.config, self.task, trial.trial_id, self.space)
            task = trial.config["trial"]["task"] if "trial" in trial.config else self.task
            row, traces = trial_row(self.sweep_name, trial_id, task, params, last, error,
                                    self.started.get(trial.trial_id, ""), _now())
            if traces:
                results.append_traces(self.sweep_dir, traces)
            results.append_trials(self.sweep_dir, [row])
            if self.mirror_uri:  # URI storage: appends stay local, the bucket gets whole files after each
                results.mirror_to_uri(self.sweep_dir, self.mirror_uri)
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


def trial_row(sweep_name: str, trial_id: str, task: str | None, params: dict[str, Any], last: dict[str, Any],
              error: str | None, started_at: str, finished_at: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One trials.parquet row (and its trace rows) from a trial's identity and last Tune result."""
    from kdray import results

    record = json.loads(last[RECORD_KEY]) if RECORD_KEY in last else {}
    error = last.get(ERROR_KEY) or error
    status = "ERROR" if error else ("TERMINATED" if record else "STOPPED")  # STOPPED: ended early by ASHA
    traces = results.trace_rows(trial_id, record.pop("traces", []))
    if not record:  # failed or stopped: keep what is known of it
        record = {"task": task, "dev_score": last.get("dev_score", math.nan)}
    row = results.trial_row(sweep_name, trial_id, record, params, status=status, error=error,
                            started_at=started_at or None, finished_at=finished_at)
    return row, traces


# --------------------------------------------------------------------------- the sweep


def run_sweep(space_path: str, address: str | None = None, storage: str | None = None, name: str | None = None,
              resume: bool = False, dry_run: bool = False, max_concurrent: int | None = None,
              num_samples: int | None = None, overrides: dict[str, Any] | None = None,
              teachers_only: bool = False) -> int:
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

    Returns:
        0 when every trial finished, 1 when some trial is recorded as ERROR, 2 for a bad configuration.
    """
    try:
        sweep = resolve_paths(load_sweep_config(space_path, overrides), Path(space_path).resolve().parent)
        if num_samples is not None:
            if num_samples < 1:
                raise ConfigError(f"--num-samples {num_samples}: must be >= 1")
            sweep.search.num_samples = num_samples
        if name is not None:
            sweep.name = name
        trials = expand_grid(sweep, str(space_path)) if sweep.search.mode == "grid" else None
        if sweep.search.mode == "optuna" and sweep.search.multi_objective and sweep.search.scheduler.type == "asha":
            raise ConfigError(f"{space_path}: search.scheduler.type: asha needs one objective; "
                              f"set search.multi_objective: false or scheduler type none")
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    if dry_run:
        print(describe(sweep, trials))
        return 0

    storage = storage or str(Path("runs").resolve())
    is_uri = "://" in storage
    if not is_uri:
        storage = str(Path(storage).resolve())
    if teachers_only:
        t0 = time.time()
        found = _teacher_stage(sweep, trials, storage, is_uri, local=True)
        print(f"[kdray] {len(found)} teacher(s) ready under {_teacher_root(sweep, storage, is_uri)} "
              f"({time.time() - t0:.1f}s)", flush=True)
        return 0

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    sweep_dir = f"{storage.rstrip('/')}/{sweep.name}"
    runtime_env = {"env_vars": _worker_env()}
    if address is None:
        # address="local": always start our own Ray, never join (and clash with) another one on this machine.
        ray.init(address="local", num_cpus=_local_num_cpus(sweep), num_gpus=0 if not sweep.resources.use_gpu else None,
                 include_dashboard=False, dashboard_host="127.0.0.1", runtime_env=runtime_env,
                 log_to_driver=True, configure_logging=True, logging_level="WARNING")
    else:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level="WARNING")
    t0 = time.time()
    try:
        concurrent = max_concurrent_trials(sweep, ray.cluster_resources(), max_concurrent)
        teachers = _teacher_stage(sweep, trials, storage, is_uri, local=address is None)
        failed = 0
        tasks = [None] if trials is not None else sweep.tasks
        for task in tasks:
            failed += _run_tuner(sweep, trials, task, storage, sweep_dir, teachers, concurrent, resume, is_uri)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    finally:
        if address is None:
            ray.shutdown()
    _summary(sweep, sweep_dir, time.time() - t0)
    return 1 if failed else 0


def _teacher_root(sweep: SweepConfig, storage: str, is_uri: bool) -> str:
    if sweep.teacher.cache_dir:
        return sweep.teacher.cache_dir
    if is_uri:  # teachers are folders that every worker opens: keep them on a path, not an object store
        from kdray.paths import cache_root

        print("[kdray] storage is a URI: teachers are cached under each node's kdray cache; set teacher.cache_dir "
              "to a shared path (NFS) on multi-node clusters", flush=True)
        return str(cache_root())
    return storage


def _teacher_stage(sweep: SweepConfig, trials: list[dict[str, Any]] | None, storage: str, is_uri: bool,
                   local: bool) -> dict[str, str]:
    """Fine-tune (or find) each distinct teacher once; returns teacher id -> folder."""
    from kdray.teacher import get_teacher

    root = _teacher_root(sweep, storage, is_uri)
    runs = [t["run"] for t in trials] if trials is not None else [
        apply_overrides(sweep.base_run(task), {"train.seed": sweep.train.seeds[0]}) for task in sweep.tasks]
    distinct = {_teacher_id(run): run for run in runs}
    out: dict[str, str] = {}
    if local and sweep.resources.use_gpu and len(distinct) > 1:
        return _teachers_concurrently(distinct, root)
    if local:
        for tid, run in distinct.items():
            # the driver fine-tunes teachers one at a time before any trial: show a bar even when the
            # file turns trial bars off (train.progress: false keeps concurrent trials' logs readable)
            out[tid] = _report_teacher(run["task"], *_one_teacher(run, root, progress=True))
        return out
    import ray

    r = sweep.resources
    remote = ray.remote(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker if r.use_gpu else 0)(
        lambda run: str(get_teacher(run["task"], run_config_from_dict(run), root).path))
    refs = {tid: remote.remote(run) for tid, run in distinct.items()}
    return {tid: ray.get(ref) for tid, ref in refs.items()}


def _one_teacher(run: dict[str, Any], root: str, progress: bool = False) -> tuple[str, float, float]:
    """(folder, score, seconds) of one teacher, found or fine-tuned (also a process-pool job)."""
    from kdray.teacher import get_teacher

    t = time.time()
    found = get_teacher(run["task"], run_config_from_dict(run), root, progress=progress)
    return str(found.path), found.score, time.time() - t


def _report_teacher(task: str, path: str, score: float, seconds: float) -> str:
    """Print one teacher's line of the teacher stage; returns its folder."""
    print(f"[kdray] teacher {task}: {path} (score {score:.4f}, {seconds:.1f}s)", flush=True)
    return path


def _teachers_concurrently(distinct: dict[str, dict[str, Any]], root: str) -> dict[str, str]:
    """Fine-tune (or find) the teachers in parallel processes that share the local GPU.

    One small teacher fine-tune leaves most of a GPU idle (Python-bound steps), so on a GPU the stage takes
    about as long as its slowest teacher instead of their sum; on CPUs they run one at a time (they would only
    split the cores). Processes are spawned: CUDA cannot be re-initialised in a forked child.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out: dict[str, str] = {}
    workers = min(len(distinct), os.cpu_count() or 1, 8)
    print(f"[kdray] fine-tuning {len(distinct)} teachers, {workers} at a time on the GPU", flush=True)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {tid: pool.submit(_one_teacher, run, root) for tid, run in distinct.items()}
        for tid, job in jobs.items():
            out[tid] = _report_teacher(distinct[tid]["task"], *job.result())
    return out


def _run_tuner(sweep: SweepConfig, trials: list[dict[str, Any]] | None, task: str | None, storage: str,
               sweep_dir: str, teachers: dict[str, str], concurrent: int, resume: bool, is_uri: bool) -> int:
    """One Tuner (the grid, or one task's Optuna study); returns how many of its trials ended in ERROR."""
    from ray import tune

    tuner_name = "tune" if task is None else f"tune_{task}"
    trials_dir = f"{sweep_dir}/trials" if not is_uri else str(Path(tempfile.gettempdir()) / "kdray_trials" / sweep.name)
    ctx = {"sweep": sweep.model_dump(), "task": task, "teachers": teachers, "trials_dir": trials_dir,
           "runs": {t["trial_key"]: t["run"] for t in trials or []},
           "train_storage": f"{sweep_dir}/train", "sweep_dir": sweep_dir, "teacher_root": _teacher_root(sweep, storage, is_uri)}
    trainable = tune.with_resources(tune.with_parameters(_trial_fn, ctx=ctx), _tune_resources(sweep))
    path = f"{sweep_dir}/{tuner_name}"
    if resume and tune.Tuner.can_restore(path):
        print(f"[kdray] resuming {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=False)
    else:
        if not resume and not is_uri and (Path(path) / "tuner.pkl").exists():
            raise ConfigError(f"{path} already holds this sweep; pass --resume to continue it or --name NEW")
        search = sweep.search
        metric: Any = search.metric
        mode: Any = search.mode_direction
        scheduler = None
        search_alg = None
        if search.scheduler.type == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=search.scheduler.grace_period,
                                      reduction_factor=search.scheduler.reduction_factor)
        if trials is not None:
            # Tune shows and stores each trial's config: its identity, not the whole run (thousands of
            # characters in every status line); _trial_fn finds the run by trial_key
            param_space: dict[str, Any] = {"trial": tune.grid_search([{k: v for k, v in t.items() if k != "run"}
                                                                      for t in trials])}
            num_samples = 1
        else:
            import optuna
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch

            if search.multi_objective:
                metric, mode = [search.metric, "train_seconds"], [search.mode_direction, "min"]
            sampler = optuna.samplers.TPESampler(seed=search.seed)
            optuna_search = (OptunaSearch(metric=metric, mode=mode, sampler=sampler) if search.multi_objective
                             else OptunaSearch(sampler=sampler))  # single objective: metric from TuneConfig
            search_alg = ConcurrencyLimiter(optuna_search, max_concurrent=concurrent)
            param_space = _tune_space(sweep)
            num_samples = search.num_samples
        multi = isinstance(metric, list)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=None if multi else metric, mode=None if multi else mode,
                num_samples=num_samples, max_concurrent_trials=concurrent, search_alg=search_alg,
                scheduler=scheduler, reuse_actors=False,
                trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=tuner_name, storage_path=sweep_dir,
                callbacks=[_make_recorder(_results_dir(sweep_dir, sweep.name), sweep, task,
                                          sweep_dir if "://" in sweep_dir else None)],
                failure_config=tune.FailureConfig(max_failures=0),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=1),
        )
    grid = tuner.fit()
    return sum(1 for r in grid if r.error is not None or (r.metrics or {}).get(ERROR_KEY))


def _results_dir(sweep_dir: str, name: str) -> str:
    """Where the Parquet files are appended: the sweep folder, or ./runs/<name> when storage is a URI
    (appends need a local lock and rename; the recorder mirrors whole files to the URI after each)."""
    return sweep_dir if "://" not in sweep_dir else str(Path("runs", name).resolve())


def _summary(sweep: SweepConfig, sweep_dir: str, seconds: float) -> None:
    if "://" in sweep_dir:
        print(f"[kdray] Parquet files mirrored to {sweep_dir}/ after every trial")
    sweep_dir = _results_dir(sweep_dir, sweep.name)
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
        best = ok.sort_values("dev_score", ascending=sweep.search.mode_direction == "min").iloc[0]
        print(f"[kdray] best: {best['trial_id']} {best['task']} dev_score={best['dev_score']:.4f} "
              f"method={best['method']}")
    print(f"[kdray] results: {sweep_dir}/trials.parquet, {sweep_dir}/traces.parquet")
