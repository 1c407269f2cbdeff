"""The teacher stage: each distinct teacher of a sweep is fine-tuned (or found in the cache) once, before trials.

Each distinct (teacher, task, teacher.seed, data, max length) is fine-tuned by :func:`kdray.teacher.get_teacher`
with the cache under ``<storage>/teachers`` (shared by sweeps of the same storage): in the driver for local Ray
(in parallel processes when they share a GPU) and as a Ray task (with the trial's GPUs) on a cluster.
"""

from __future__ import annotations

import os
import time

from kdray.config import RunConfig, SweepConfig
from kdray.io import short_hash


def teacher_id(run: RunConfig) -> str:
    """Which teacher a run distils from: runs with the same id share one fine-tuned teacher."""
    return short_hash({"task": run.task, "teacher": run.teacher.model_dump(), "data": run.data.model_dump(),
                       "max_seq_length": run.train.max_seq_length}, 10, "sha1")


def teacher_root(sweep: SweepConfig, storage: str, is_uri: bool) -> str:
    """Where the sweep's teachers are cached: ``teacher.cache_dir``, the storage, or each node's kdray cache."""
    if sweep.teacher.cache_dir:
        return sweep.teacher.cache_dir
    if is_uri:  # teachers are folders that every worker opens: keep them on a path, not an object store
        from kdray.paths import cache_root

        print("[kdray] storage is a URI: teachers are cached under each node's kdray cache; set teacher.cache_dir "
              "to a shared path (NFS) on multi-node clusters", flush=True)
        return str(cache_root())
    return storage


def teacher_stage(sweep: SweepConfig, runs: list[RunConfig], root: str, local: bool) -> dict[str, str]:
    """Fine-tune (or find) the teacher of each distinct run once; returns teacher id -> folder."""
    distinct = {teacher_id(run): run for run in runs}
    if local and sweep.resources.use_gpu and len(distinct) > 1:
        return _teachers_concurrently(distinct, root)
    if local:
        # the driver fine-tunes teachers one at a time before any trial: show a bar even when the
        # file turns trial bars off (train.progress: false keeps concurrent trials' logs readable)
        return {tid: _report_teacher(run.task, *one_teacher(run, root, progress=True))
                for tid, run in distinct.items()}
    import ray

    r = sweep.resources
    remote = ray.remote(num_cpus=r.cpus_per_worker, num_gpus=r.gpus_per_worker if r.use_gpu else 0)(teacher_folder)
    refs = {tid: remote.remote(run, root) for tid, run in distinct.items()}
    return {tid: ray.get(ref) for tid, ref in refs.items()}


def teacher_folder(run: RunConfig, root: str) -> str:
    """The folder of ``run``'s teacher under ``root``, fine-tuned there first if no cached one matches."""
    from kdray.teacher import get_teacher

    return str(get_teacher(run.task, run, root).path)


def one_teacher(run: RunConfig, root: str, progress: bool = False) -> tuple[str, float, float]:
    """(folder, score, seconds) of one teacher, found or fine-tuned (also a process-pool job)."""
    from kdray.teacher import get_teacher

    t = time.time()
    found = get_teacher(run.task, run, root, progress=progress)
    return str(found.path), found.score, time.time() - t


def _report_teacher(task: str, path: str, score: float, seconds: float) -> str:
    """Print one teacher's line of the teacher stage; returns its folder."""
    print(f"[kdray] teacher {task}: {path} (score {score:.4f}, {seconds:.1f}s)", flush=True)
    return path


def _teachers_concurrently(distinct: dict[str, RunConfig], root: str) -> dict[str, str]:
    """Fine-tune (or find) the teachers in parallel processes that share the local GPU.

    One small teacher fine-tune leaves most of a GPU idle (Python-bound steps), so on a GPU the stage takes
    about as long as its slowest teacher instead of their sum; on CPUs they run one at a time (they would only
    split the cores). Processes are spawned: CUDA cannot be re-initialised in a forked child.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = min(len(distinct), os.cpu_count() or 1, 8)
    print(f"[kdray] fine-tuning {len(distinct)} teachers, {workers} at a time on the GPU", flush=True)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {tid: pool.submit(one_teacher, run, root) for tid, run in distinct.items()}
        return {tid: _report_teacher(distinct[tid].task, *job.result()) for tid, job in jobs.items()}
