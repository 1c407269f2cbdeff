"""Ray's per-trial overhead: sweeps of trivial trials on a local Ray started and stopped here.

Wired as ``kdray.sweep`` wires a one-worker trial (the loop in a 1-CPU Tune function trial): sweep wall
time minus in-trial time, per trial; Ray start-up is reported apart, and (full mode) the same trials
wired as DDP trials are (a 0.01-CPU Tune trial launching a ``TorchTrainer`` that reports through
``TuneReportCallback``).
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
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

    started = time.time()
    t0 = time.perf_counter()
    x = torch.ones(8, 8)
    for _ in range(10):
        x = x @ x / 8
    tune.report({"in_trial_s": time.perf_counter() - t0, "fit_s": time.perf_counter() - t0,
                 "t_start": started, "t_end": time.time()})


@dataclass
class SweepTiming:
    """One ``Tuner.fit`` of trivial trials: its wall clock and each trial's in-trial start and end (epoch s)."""

    fit_start: float
    fit_end: float
    in_trial: float  # summed in-trial seconds
    latency: float  # median TorchTrainer.fit wall minus in-trial time (Ray Train variant)
    starts: list[float]
    ends: list[float]
    conc: int

    @property
    def wall(self) -> float:
        return self.fit_end - self.fit_start

    def steady(self) -> float:
        """Wall seconds per trial once the first wave of ``conc`` trials has ended (NaN with too few trials).

        Trials end in waves of ``conc``; the slope from the first wave's last end to the last end is what each
        further trial adds to a sweep, without Ray's and Tune's start-up and shutdown: the figure Ray's own
        scalability benchmark reports (about 0.14 s per trial over 10,000 trials).
        """
        ends = sorted(self.ends)
        if len(ends) <= self.conc:
            return math.nan
        return (ends[-1] - ends[self.conc - 1]) / (len(ends) - self.conc)

    def fixed_parts(self) -> str:
        """Where a sweep's fixed cost goes: before the first trial starts, the first wave, after the last end."""
        ends = sorted(self.ends)
        if not self.starts or len(ends) < self.conc:
            return ""
        return (f"; Tune set-up to first trial start {min(self.starts) - self.fit_start:.1f} s, first wave "
                f"{ends[self.conc - 1] - min(self.starts):.1f} s, last trial end to fit() return "
                f"{self.fit_end - ends[-1]:.1f} s")


def variant_rows(label: str, timing: SweepTiming, n_trials: int) -> list[Row]:
    """The rows of one Ray variant: per-trial overhead = (sweep wall - in-trial time) / trials."""
    wall, conc = timing.wall, timing.conc
    per = (wall - timing.in_trial) / n_trials
    if label == "sweep":
        steady = timing.steady()
        fixed = wall - steady * n_trials
        return [check(Row(
            "ray", "per_trial_overhead", "local ray", seconds=per, value=per, unit="s/trial", repeats=n_trials,
            note=f"({wall:.1f} s sweep wall - {timing.in_trial:.3f} s in-trial) / {n_trials} trials; kdray.sweep "
                 f"wiring of a one-worker trial (resources.trainer auto): the loop in a 1-CPU Tune "
                 f"function trial, {conc} at a time, trial processes reused (reuse_actors)"), "ray_per_trial_s", per),
                check(Row(
            "ray", "per_trial_steady", "local ray", seconds=steady, value=steady, unit="s/trial",
            repeats=n_trials - conc,
            note=f"the same sweep after its first wave of {conc} trials: (last trial end - first wave's end) / "
                 f"{n_trials - conc} trials, so Ray and Tune start-up and shutdown are out (the slope Ray's "
                 f"scalability benchmark reports)"), "ray_steady_per_trial_s", steady),
                Row("ray", "per_sweep_fixed", "local ray", seconds=fixed, value=fixed, unit="s/sweep", repeats=1,
                    note="sweep wall - trials x steady state, paid once per sweep" + timing.fixed_parts())]
    if label == "new_process":
        return [Row("ray", "per_trial_overhead_new_process", "local ray", seconds=per, value=per, unit="s/trial",
                    repeats=n_trials, note="the same trials, each in a new process (reuse_actors off; kdray before "
                                           "stop 21)")]
    return [Row("ray", "per_trial_overhead_ray_train", "local ray", seconds=per, value=per, unit="s/trial",
                repeats=n_trials, note=f"the same trials as a Tune trial -> TorchTrainer(1 worker) (resources.trainer "
                                       f"ray_train; what every DDP trial pays), {conc} at a time"),
            Row("ray", "trial_latency_ray_train", "local ray", seconds=timing.latency, value=timing.latency,
                unit="s/trial", repeats=n_trials,
                note="median TorchTrainer.fit wall minus in-trial time, inside a trial")]


def timed_fit(tuner: Any, conc: int) -> SweepTiming:
    """Run the sweep; its wall clock and the trials' own timestamps (a failed trial raises)."""
    fit_start = time.time()
    grid = tuner.fit()
    fit_end = time.time()
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RuntimeError(f"Ray bench trials failed: {errors[0]}")
    metrics = [r.metrics for r in grid]
    return SweepTiming(fit_start, fit_end, in_trial=sum(float(m["in_trial_s"]) for m in metrics),
                       latency=median([float(m["fit_s"]) - float(m["in_trial_s"]) for m in metrics]),
                       starts=[float(m["t_start"]) for m in metrics if "t_start" in m],
                       ends=[float(m["t_end"]) for m in metrics if "t_end" in m], conc=conc)


def _quiet_init(init: Callable[..., Any], **kwargs: Any) -> Any:
    """``init`` (``ray.init``) with a sweep's local-start arguments, minus the trials' log forwarding."""
    return init(**{**kwargs, "log_to_driver": False, "logging_level": "ERROR"})


def bench_ray(work: Path, n_trials: int, log: Callable[[str], None], with_ray_train: bool,
              other_trials: int | None = None) -> list[Row]:
    """Sweeps of ``n_trials`` trivial trials (kdray's wiring) on a local Ray started and stopped here; the
    comparison variants (new process per trial, Ray Train) run ``other_trials`` (default ``n_trials``)."""
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
    from kdray.sweep.ray_start import start_local

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    storage = work / "ray_storage"
    (storage / "train").mkdir(parents=True, exist_ok=True)
    sweep = SweepConfig()  # default resources: one 1-CPU worker per trial, run in the Tune trial (trainer auto)
    train_sweep = SweepConfig.model_validate({"resources": {"trainer": "ray_train"}})
    t0 = time.perf_counter()
    # a sweep's own local start (a fresh cluster of our own, on 127.0.0.1 only), with the trials' logs kept quiet
    start_local(sweep, init=functools.partial(_quiet_init, ray.init))
    start_s = time.perf_counter() - t0
    rows: list[Row] = []
    try:
        cluster = ray.cluster_resources()
        conc = max_concurrent_trials(sweep, cluster)
        others = other_trials or n_trials
        variants = [("sweep", in_trial_trial, tune_resources(sweep), conc, reuse_actors(sweep), n_trials),
                    ("new_process", in_trial_trial, tune_resources(sweep), conc, False, others)]
        if with_ray_train:
            variants.append(("ray_train", trivial_trial, {"CPU": TRIAL_DRIVER_CPU},
                             max_concurrent_trials(train_sweep, cluster), reuse_actors(train_sweep), others))
        for label, fn, resources, conc, reuse, count in variants:
            tuner = tune.Tuner(
                tune.with_resources(fn, resources),
                param_space={"i": tune.grid_search(list(range(count))), "storage": str(storage / "train")},
                tune_config=tune.TuneConfig(max_concurrent_trials=conc, reuse_actors=reuse),
                run_config=tune.RunConfig(name=f"bench_{label}", storage_path=str(storage), verbose=0),
            )
            timing = timed_fit(tuner, conc)
            per = (timing.wall - timing.in_trial) / count
            log(f"  ray {label}: {count} trials in {timing.wall:.1f} s ({conc} at a time), overhead {per:.2f} "
                f"s/trial" + (f", steady state {timing.steady():.2f} s/trial" if timing.ends else ""))
            rows += variant_rows(label, timing, count)
    finally:
        t2 = time.perf_counter()
        ray.shutdown()
        stop_s = time.perf_counter() - t2
    rows.insert(0, Row("ray", "init", "local ray", seconds=start_s, value=start_s, unit="s", repeats=1,
                       note=f"ray.init({local_num_cpus(sweep)} logical CPUs, no dashboard); shutdown {stop_s:.1f} s"))
    return rows
