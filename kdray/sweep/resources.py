"""What a trial asks of the Ray cluster, and how many trials fit at once.

A trial = its ``workers_per_trial`` x (``cpus_per_worker`` CPUs, ``gpus_per_worker`` GPUs), plus a 0.01-CPU trial
driver when Ray Train runs the workers. ``max_concurrent_trials`` = how many such trials fit the cluster's CPUs
and GPUs, so trial drivers never hold resources their own workers wait for. Local Ray gets one spare logical
CPU for the (idle) trial drivers.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

from kdray.config import ConfigError, SweepConfig

TRIAL_DRIVER_CPU = 0.01  # a Tune trial that launches a TorchTrainer only waits on it
ENV_PREFIXES = ("HF_", "KDRAY_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_", "MKL_")
QUIET_ENV = {
    "RAY_DEDUP_LOGS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "1",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "TOKENIZERS_PARALLELISM": "false",
    # Tune's "experiment state snapshotting ... may become a bottleneck" (3 lines a time): every trial keeps one
    # checkpoint (num_to_keep=1), which forces a snapshot by design
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def trial_resources(sweep: SweepConfig) -> dict[str, float]:
    """CPUs and GPUs one trial holds in total (its driver plus its Train workers, or itself when it runs the loop)."""
    r = sweep.resources
    driver = 0.0 if r.in_trial() else TRIAL_DRIVER_CPU
    return {"CPU": driver + r.workers_per_trial * r.cpus_per_worker,
            "GPU": r.workers_per_trial * r.gpus_per_worker if r.use_gpu else 0.0}


def tune_resources(sweep: SweepConfig) -> dict[str, float]:
    """What the Tune trial itself asks for: everything when it runs the loop, else a sliver (Train holds the rest)."""
    if not sweep.resources.in_trial():
        return {"CPU": TRIAL_DRIVER_CPU}
    need = trial_resources(sweep)
    return {"CPU": need["CPU"], **({"GPU": need["GPU"]} if need["GPU"] else {})}


def reuse_actors(sweep: SweepConfig) -> bool:
    """Whether Tune runs the next trial in a finished trial's process: yes when trials run the loop themselves.

    A new trial process pays Python start-up and the torch/transformers/kdray imports again: trivial trials
    took 2.7-3.9 s each on 2 loaded cores in new processes, 1.4-1.6 s in reused ones (``kdray bench``'s
    ``ray/per_trial_overhead`` against ``ray/per_trial_overhead_new_process``). Every trial of a sweep asks for
    the same resources (so a reused process has the threads the next trial would get) and the loop seeds
    every generator at run start, so nothing carries over. A trial that raised is not reused (Tune stops it).
    """
    return sweep.resources.in_trial()


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


def local_num_cpus(sweep: SweepConfig) -> int:
    """Logical CPUs of a local Ray: enough for one trial's workers, plus one spare for the mostly idle drivers."""
    r = sweep.resources
    return max(os.cpu_count() or 1, math.ceil(r.workers_per_trial * r.cpus_per_worker)) + 1


def worker_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The driver's environment variables that trials need too (offline hub, caches, thread counts)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(ENV_PREFIXES) or k in ("TOKENIZERS_PARALLELISM",)}
