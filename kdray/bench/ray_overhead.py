"""Ray's per-trial overhead: sweeps of trivial trials on a local Ray started and stopped here.

Wired as ``kdray.sweep`` wires a one-worker trial (the loop in a 1-CPU Tune function trial): sweep wall
time minus in-trial time, per trial; Ray start-up is reported apart, and (full mode) the same trials
wired as DDP trials are (a 0.01-CPU Tune trial launching a ``TorchTrainer`` that reports through
``TuneReportCallback``).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdray.bench.rows import Row, check


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def trivial_worker(config: dict[str, Any]) -> None:
    """Ray Train worker of a trivial trial: a few tiny matmuls, timed, then one report."""
    import ray.train

    t0 = time.perf_counter()
    x = torch.ones(8, 8)
    for _ in range(10):
        x = x @ x / 8
    seconds = time.perf_counter() - t0
    # Tune gets this report through TuneReportCallback; the trial reads the time back from a file
    # (Ray Train V2's Result.metrics is empty when reports go to Tune).
    Path(config["out"]).write_text(repr(seconds))
    ray.train.report({"in_trial_s": seconds})


def trivial_trial(config: dict[str, Any]) -> None:
    """A Tune trial wired as ``kdray.sweep's trial function``: a TorchTrainer whose reports reach Tune."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from kdray.config import ResourcesConfig

    r = ResourcesConfig()
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        trivial_worker,
        train_loop_config={"out": str(Path(config["storage"]) / f"in_trial_{config['i']}.txt")},
        scaling_config=ray.train.ScalingConfig(num_workers=r.workers_per_trial, use_gpu=False,
                                               resources_per_worker={"CPU": r.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=f"bench-{config['i']}", storage_path=config["storage"],
                                       callbacks=[TuneReportCallback()]),
    )
    trainer.fit()
    fit_s = time.perf_counter() - t0
    in_trial = float((Path(config["storage"]) / f"in_trial_{config['i']}.txt").read_text())
    tune.report({"in_trial_s": in_trial, "fit_s": fit_s})


def in_trial_trial(config: dict[str, Any]) -> None:
    """The same trivial work in the Tune trial itself, as kdray.sweep runs a one-worker trial (no Ray Train)."""
    from ray import tune

    t0 = time.perf_counter()
    x = torch.ones(8, 8)
    for _ in range(10):
        x = x @ x / 8
    tune.report({"in_trial_s": time.perf_counter() - t0, "fit_s": time.perf_counter() - t0})


def variant_rows(label: str, wall: float, in_trial: float, latency: float, n_trials: int, conc: int) -> list[Row]:
    """The rows of one Ray variant: per-trial overhead = (sweep wall - in-trial time) / trials."""
    per = (wall - in_trial) / n_trials
    if label == "sweep":
        return [check(Row(
            "ray", "per_trial_overhead", "local ray", seconds=per, value=per, unit="s/trial", repeats=n_trials,
            note=f"({wall:.1f} s sweep wall - {in_trial:.3f} s in-trial) / {n_trials} trials; kdray.sweep "
                 f"wiring of a one-worker trial (resources.trainer auto): the loop in a 1-CPU Tune "
                 f"function trial, {conc} at a time, trial processes reused (reuse_actors)"), "ray_per_trial_s", per)]
    if label == "new_process":
        return [Row("ray", "per_trial_overhead_new_process", "local ray", seconds=per, value=per, unit="s/trial",
                    repeats=n_trials, note="the same trials, each in a new process (reuse_actors off; kdray before "
                                           "stop 21)")]
    return [Row("ray", "per_trial_overhead_ray_train", "local ray", seconds=per, value=per, unit="s/trial",
                repeats=n_trials, note=f"the same trials as a Tune trial -> TorchTrainer(1 worker) (resources.trainer "
                                       f"ray_train; what every DDP trial pays), {conc} at a time"),
            Row("ray", "trial_latency_ray_train", "local ray", seconds=latency, value=latency, unit="s/trial",
                repeats=n_trials, note="median TorchTrainer.fit wall minus in-trial time, inside a trial")]


def bench_ray(work: Path, n_trials: int, log: Callable[[str], None], with_ray_train: bool) -> list[Row]:
    """Sweeps of ``n_trials`` trivial trials on a local Ray started and stopped here."""
    import ray
    from ray import tune

    from kdray.config import SweepConfig
    from kdray.sweep import (
        QUIET_ENV,
        TRIAL_DRIVER_CPU,
        local_num_cpus,
        max_concurrent_trials,
        reuse_actors,
        tune_resources,
    )
    
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    storage = work / "ray_storage"
    (storage / "train").mkdir(parents=True, exist_ok=True)
    sweep = SweepConfig()  # default resources: one 1-CPU worker per trial, run in the Tune trial (trainer auto)
    train_sweep = SweepConfig.model_validate({"resources": {"trainer": "ray_train"}})
    t0 = time.perf_counter()
    # address="local": always a fresh local cluster of our own, never another job's running one
    ray.init(address="local", num_cpus=local_num_cpus(sweep), num_gpus=0, include_dashboard=False,
             dashboard_host="127.0.0.1",
             log_to_driver=False, configure_logging=True, logging_level="ERROR")
    start_s = time.perf_counter() - t0
    rows: list[Row] = []
    try:
        cluster = ray.cluster_resources()
        conc = max_concurrent_trials(sweep, cluster)
        variants = [("sweep", in_trial_trial, tune_resources(sweep), conc, reuse_actors(sweep)),
                    ("new_process", in_trial_trial, tune_resources(sweep), conc, False)]
        if with_ray_train:
            variants.append(("ray_train", trivial_trial, {"CPU": TRIAL_DRIVER_CPU},
                             max_concurrent_trials(train_sweep, cluster), reuse_actors(train_sweep)))
        for label, fn, resources, conc, reuse in variants:
            tuner = tune.Tuner(
                tune.with_resources(fn, resources),
                param_space={"i": tune.grid_search(list(range(n_trials))), "storage": str(storage / "train")},
                tune_config=tune.TuneConfig(max_concurrent_trials=conc, reuse_actors=reuse),
                run_config=tune.RunConfig(name=f"bench_{label}", storage_path=str(storage), verbose=0),
            )
            t1 = time.perf_counter()
            grid = tuner.fit()
            wall = time.perf_counter() - t1
            errors = [r.error for r in grid if r.error]
            if errors:
                raise RuntimeError(f"Ray bench trials failed: {errors[0]}")
            in_trial = sum(float(r.metrics["in_trial_s"]) for r in grid)
            latency = median([float(r.metrics["fit_s"]) - float(r.metrics["in_trial_s"]) for r in grid])
            per = (wall - in_trial) / n_trials
            log(f"  ray {label}: {n_trials} trials in {wall:.1f} s ({conc} at a time), overhead {per:.2f} s/trial")
            rows += variant_rows(label, wall, in_trial, latency, n_trials, conc)
    finally:
        t2 = time.perf_counter()
        ray.shutdown()
        stop_s = time.perf_counter() - t2
    rows.insert(0, Row("ray", "init", "local ray", seconds=start_s, value=start_s, unit="s", repeats=1,
                       note=f"ray.init({local_num_cpus(sweep)} logical CPUs, no dashboard); shutdown {stop_s:.1f} s"))
    return rows
