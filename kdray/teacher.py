"""Fine-tune a teacher once per (model, task, seed, hyper-parameters, data) and cache it.

Every distillation trial of a sweep needs the same fine-tuned teacher, so
:func:`get_teacher` keys a folder by everything that changes the teacher and
fine-tunes only when that folder is missing; the folder appears atomically (temp
dir + rename) and a file lock keeps concurrent trials from training it twice.
The teacher trains on the task's train split (the reward holdout included: the
teacher is not the thing being selected; ``data.max_train_samples`` still caps it) and is scored on dev with the
official metric.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from kdray.config import EVAL_BATCH_SIZE, DataConfig, RunConfig, TeacherConfig
from kdray.glue import get_task, make_collator, prepare_data
from kdray.io import TMP_SUFFIX, atomic_folder, atomic_write_json, locked, short_hash
from kdray.knowledge import run_model, task_loss
from kdray.loop_data import bucketed_batches
from kdray.models import load_teacher, load_tokenizer, resolve_model
from kdray.paths import cache_root as default_cache_root
from kdray.training import adamw, canonical_metrics, evaluate, linear_schedule, pick_device, seed_everything, weight_files

METRICS_FILE = "metrics.json"
HYPERPARAMETERS: tuple[str, ...] = ("epochs", "batch_size", "lr", "warmup_ratio", "weight_decay", "seed")


@dataclass
class TeacherResult:
    """A fine-tuned teacher folder and its dev results."""

    path: Path
    metrics: dict[str, float]
    score: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)  # the whole metrics.json


# --------------------------------------------------------------------------- cache keys


def teacher_key(task: str, teacher: TeacherConfig, data: DataConfig, max_seq_length: int) -> dict[str, Any]:
    """Everything that changes a fine-tuned teacher's training or dev rows, its model and its hyperparameters.

    The data part names every setting that picks the rows (issue 19.9: before, a teacher fine-tuned on
    another subsample, holdout or data source was reused silently): the subsample sizes and seed, the reward
    holdout carved off the train split, and where the rows come from (``data.source`` and ``data.dir`` as
    configured; sweeps make ``dir`` absolute). The tokenization cache folder is left out: it changes no row.
    """
    return {
        "model": teacher.model,
        "task": task,
        "hyperparameters": {k: getattr(teacher, k) for k in HYPERPARAMETERS},
        "max_seq_length": int(max_seq_length),
        "max_train_samples": data.max_train_samples,
        "max_eval_samples": data.max_eval_samples,
        "rows": {"subsample_seed": data.subsample_seed, "holdout_fraction": data.holdout_fraction,
                 "holdout_max": data.holdout_max, "source": data.source, "dir": data.dir},
    }


def teacher_cache_dir(task: str, teacher: TeacherConfig, data: DataConfig, max_seq_length: int,
                      cache_root: Path | str) -> Path:
    """The cached teacher's folder: ``<teacher.cache_dir or cache_root/teachers>/<task>-<model>-<hash>``."""
    digest = short_hash(teacher_key(task, teacher, data, max_seq_length), 12)
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(teacher.model).name or teacher.model)[:40]
    root = Path(teacher.cache_dir) if teacher.cache_dir else Path(cache_root) / "teachers"
    return root / f"{task}-{slug}-{digest}"


def _read_result(folder: Path) -> TeacherResult | None:
    file = folder / METRICS_FILE
    if not file.is_file():
        return None
    info = json.loads(file.read_text())
    return TeacherResult(folder, canonical_metrics(info["metrics"]), float(info["score"]),
                         float(info.get("seconds", 0.0)), info)


# --------------------------------------------------------------------------- training


@dataclass
class _TrainRows:
    """The rows a teacher trains on: (dataset, index) pairs and their token lengths."""

    rows: list[tuple[Any, int]]
    lengths: list[int]

    def batch(self, collate: Callable, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        batch = collate([self.rows[i][0][self.rows[i][1]] for i in indices])
        return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in batch}


def _train_rows(task: str, prepared: Any, data: DataConfig) -> _TrainRows:
    """The train split plus the reward holdout, capped at ``data.max_train_samples``.

    The reward holdout is carved off the full split before subsampling: give it back to the teacher,
    but never more rows than data.max_train_samples.
    """
    train_sets = [prepared.train] + ([prepared.holdout] if prepared.holdout is not None and len(prepared.holdout) else [])
    rows = [(ds, i) for ds in train_sets for i in range(len(ds))][: data.max_train_samples]
    lengths = [int(x) for ds in train_sets for x in ds["length"]][: len(rows)]
    if not rows:
        raise ValueError(f"{task}: no training rows (data.max_train_samples={data.max_train_samples})")
    return _TrainRows(rows, lengths)


def _fit(model: torch.nn.Module, train: _TrainRows, collate: Callable, teacher: TeacherConfig, device: torch.device,
         desc: str, progress: bool) -> int:
    """Fine-tune ``model`` in place for ``teacher.epochs`` epochs; returns the number of steps."""
    steps_per_epoch = math.ceil(len(train.rows) / teacher.batch_size)
    total_steps = max(1, math.ceil(teacher.epochs * steps_per_epoch))
    optimizer = adamw([model], teacher.lr, teacher.weight_decay)
    scheduler = linear_schedule(optimizer, total_steps, teacher.warmup_ratio, warmup="hf_linear")
    gen = torch.Generator().manual_seed(teacher.seed)
    regression = model.config.problem_type == "regression"  # load_teacher sets it from the task
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, dynamic_ncols=True)
    step, epoch, running = 0, 0, None
    while step < total_steps:
        for batch_rows in bucketed_batches(train.lengths, teacher.batch_size, gen):
            if step >= total_steps:
                break
            batch = train.batch(collate, batch_rows, device)
            # logits from kdray's run_model: its top layer computes the [CLS] row only (kdray.top_layer)
            loss = task_loss(run_model(model, batch).logits, batch["labels"], regression)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{running:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        epoch += 1
    bar.close()
    return total_steps


def _replaceable(out: Path) -> bool:
    """A missing folder, an empty one, or an older kdray teacher (has metrics.json)."""
    return not out.exists() or (out / METRICS_FILE).is_file() or (out.is_dir() and not any(out.iterdir()))


def _publish(model: torch.nn.Module, tokenizer: Any, info: dict[str, Any], out: Path) -> None:
    """Write the teacher folder atomically; replaces an older teacher there but never foreign files."""
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / METRICS_FILE, info)
        old = None
        if out.exists():  # the last step before the rename: an older teacher moves aside (a temp name)
            if not _replaceable(out):
                raise FileExistsError(f"{out} exists and is not a kdray teacher folder; choose another --out")
            old = out.with_name(f".{out.name}.old-{os.getpid()}{TMP_SUFFIX}")
            os.rename(out, old)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def finetune_teacher(
    task: str,
    teacher: TeacherConfig,
    data: DataConfig,
    max_seq_length: int,
    out_dir: str | Path | None = None,
    progress: bool = True,
    cache_root: Path | str | None = None,
) -> TeacherResult:
    """Fine-tune ``teacher.model`` on ``task`` and save model, tokenizer and metrics.json in ``out_dir``.

    Args:
        task: GLUE task name (``rte``).
        teacher: model and hyper-parameters (epochs, batch_size, lr, warmup_ratio, weight_decay, seed).
        data: data source and the deterministic train/eval subsampling.
        max_seq_length: tokenizer truncation length.
        out_dir: where the teacher goes (written atomically); None = its cache folder.
        progress: show a tqdm bar (steps, loss, ETA).
        cache_root: root for the default ``out_dir``; None = ``kdray.paths.cache_root()``.
    Returns:
        TeacherResult with the folder, dev metrics, primary score and training seconds.
    """
    if out_dir is None:
        out_dir = teacher_cache_dir(task, teacher, data, max_seq_length, cache_root or default_cache_root())
    out = Path(out_dir)
    if not _replaceable(out):  # fail before minutes of training, not after
        raise FileExistsError(f"{out} exists and is not a kdray teacher folder; choose another --out")
    spec = get_task(task)
    start = time.perf_counter()
    seed_everything(teacher.seed)
    tokenizer = load_tokenizer(teacher.model)
    prepared = prepare_data(task, tokenizer, data, max_seq_length, teacher.seed)
    train = _train_rows(task, prepared, data)
    collate = make_collator(tokenizer)

    torch.manual_seed(teacher.seed)  # the fresh classification head
    device = pick_device()
    model = load_teacher(teacher.model, spec, attentions=False)  # SDPA: fine-tuning never needs attention maps
    model.to(device).train()
    total_steps = _fit(model, train, collate, teacher, device, f"teacher {task}", progress)
    train_seconds = time.perf_counter() - start

    result = evaluate(task, model, prepared.dev, collate, EVAL_BATCH_SIZE)
    info = {
        "task": task,
        "model": teacher.model,
        "resolved_model": resolve_model(teacher.model),
        "metrics": result.metrics,
        "score": result.score,
        "metric_name": "+".join(spec.metrics),
        "seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start - train_seconds,
        "train_steps": total_steps,
        "train_rows": len(train.rows),
        "dev_rows": {k: len(v) for k, v in prepared.dev.items()},
        "hyperparameters": {k: getattr(teacher, k) for k in HYPERPARAMETERS},
        "max_seq_length": int(max_seq_length),
        "data": data.model_dump(),
        "key": teacher_key(task, teacher, data, max_seq_length),
    }
    _publish(model, tokenizer, info, out)
    return TeacherResult(out, result.metrics, result.score, train_seconds, info)


def _evaluate_finetuned(task: str, path: str, run: RunConfig, root: Path) -> TeacherResult:
    """Score a user-given fine-tuned teacher once; the metrics are cached beside the teachers, not in its folder."""
    resolved = Path(resolve_model(path))
    key = {"path": str(resolved), "task": task, "max_seq_length": run.train.max_seq_length,
           "max_eval_samples": run.data.max_eval_samples, "files": weight_files(resolved)}
    cached = root / "evaluated" / f"{task}-{short_hash(key, 12)}.json"
    if cached.is_file():
        info = json.loads(cached.read_text())
        return TeacherResult(resolved, canonical_metrics(info["metrics"]), float(info["score"]), 0.0, info)
    start = time.perf_counter()
    tokenizer = load_tokenizer(str(resolved))
    prepared = prepare_data(task, tokenizer, run.data, run.train.max_seq_length, run.teacher.seed)
    model = load_teacher(str(resolved), get_task(task), attentions=False)
    model.to(pick_device())
    result = evaluate(task, model, prepared.dev, make_collator(tokenizer), EVAL_BATCH_SIZE)
    info = {"task": task, "path": str(resolved), "metrics": result.metrics, "score": result.score,
            "eval_seconds": time.perf_counter() - start, "key": key}
    atomic_write_json(cached, info)
    return TeacherResult(resolved, result.metrics, result.score, 0.0, info)


def get_teacher(task: str, run: RunConfig, cache_root: Path | str, progress: bool | None = None) -> TeacherResult:
    """The fine-tuned teacher of ``task`` for ``run``: ``teacher.finetuned[task]``, the cached one, or a new one.

    Args:
        task: GLUE task name.
        run: the run config (teacher, data and ``train.max_seq_length`` form the cache key).
        cache_root: used when ``run.teacher.cache_dir`` is unset (teachers go to ``cache_root/teachers``).
        progress: tqdm bar while fine-tuning; None = ``run.train.progress``.
    """
    root = Path(run.teacher.cache_dir) if run.teacher.cache_dir else Path(cache_root) / "teachers"
    if task in run.teacher.finetuned:
        return _evaluate_finetuned(task, run.teacher.finetuned[task], run, root)
    folder = teacher_cache_dir(task, run.teacher, run.data, run.train.max_seq_length, cache_root)
    found = _read_result(folder)
    if found is not None:
        return found
    with locked(folder.with_name(f".{folder.name}.lock")):
        found = _read_result(folder)  # another trial may have finished it while we waited
        if found is not None:
            return found
        return finetune_teacher(task, run.teacher, run.data, run.train.max_seq_length, folder,
                                progress=run.train.progress if progress is None else progress)
