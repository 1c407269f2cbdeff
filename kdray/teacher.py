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

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from kdray.config import EVAL_BATCH_SIZE, DataConfig, RunConfig, TeacherConfig
from kdray.glue import compute_metrics, get_task, make_collator, prepare_data, primary_score
from kdray.loop_data import predict as loop_predict
from kdray.models import load_teacher, load_tokenizer, resolve_model
from kdray.paths import locked

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
    """Everything that changes a fine-tuned teacher (and nothing that does not, e.g. the data folder)."""
    return {
        "model": teacher.model,
        "task": task,
        "hyperparameters": {k: getattr(teacher, k) for k in HYPERPARAMETERS},
        "max_seq_length": int(max_seq_length),
        "max_train_samples": data.max_train_samples,
        "max_eval_samples": data.max_eval_samples,
    }


def teacher_cache_dir(task: str, teacher: TeacherConfig, data: DataConfig, max_seq_length: int,
                      cache_root: Path | str) -> Path:
    """The cached teacher's folder: ``<teacher.cache_dir or cache_root/teachers>/<task>-<model>-<hash>``."""
    key = json.dumps(teacher_key(task, teacher, data, max_seq_length), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(teacher.model).name or teacher.model)[:40]
    root = Path(teacher.cache_dir) if teacher.cache_dir else Path(cache_root) / "teachers"
    return root / f"{task}-{slug}-{digest}"


def _read_result(folder: Path) -> TeacherResult | None:
    file = folder / METRICS_FILE
    if not file.is_file():
        return None
    info = json.loads(file.read_text())
    return TeacherResult(folder, dict(info["metrics"]), float(info["score"]), float(info.get("seconds", 0.0)), info)


# --------------------------------------------------------------------------- training


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs, so a teacher is reproducible from its key."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def bucketed_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Random batches of similar lengths: sort inside windows of 50 batches, then shuffle batches."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * 50
    order = [i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lambda i: lengths[i])]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def predict(model: torch.nn.Module, dataset: Any, collate: Callable, batch_size: int,
            is_regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels over a dataset, in its row order (the training loop's length-ordered evaluation)."""
    device = next(model.parameters()).device
    preds, labels, _ = loop_predict(model, dataset, collate, batch_size, device, is_regression)
    dtype = np.float64 if is_regression else np.int64
    return np.asarray(preds, dtype=dtype), np.asarray(labels, dtype=dtype)


def evaluate(task: str, model: torch.nn.Module, dev: dict[str, Any], collate: Callable,
             batch_size: int = EVAL_BATCH_SIZE) -> tuple[dict[str, float], float]:
    """Official dev metrics (keys prefixed by split when there are several, e.g. MNLI) and the primary score."""
    spec = get_task(task)
    metrics: dict[str, float] = {}
    scores = []
    for split, ds in dev.items():
        preds, labels = predict(model, ds, collate, batch_size, spec.is_regression)
        m = compute_metrics(task, preds, labels)
        scores.append(primary_score(task, m))
        prefix = "" if len(dev) == 1 else f"{split}/"
        metrics.update({f"{prefix}{k}": float(v) for k, v in m.items()})
    return metrics, float(np.mean(scores))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without decay on biases and LayerNorm weights (the BERT recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _replaceable(out: Path) -> bool:
    """A missing folder, an empty one, or an older kdray teacher (has metrics.json)."""
    return not out.exists() or (out / METRICS_FILE).is_file() or (out.is_dir() and not any(out.iterdir()))


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished folder into place; replaces an older teacher there but never foreign files."""
    if out.exists():
        if _replaceable(out):
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
            return
        raise FileExistsError(f"{out} exists and is not a kdray teacher folder; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, out)


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
        from kdray.paths import cache_root as default_root

        out_dir = teacher_cache_dir(task, teacher, data, max_seq_length, cache_root or default_root())
    out = Path(out_dir)
    if not _replaceable(out):  # fail before minutes of training, not after
        raise FileExistsError(f"{out} exists and is not a kdray teacher folder; choose another --out")
    spec = get_task(task)
    start = time.perf_counter()
    seed_everything(teacher.seed)
    tokenizer = load_tokenizer(teacher.model)
    prepared = prepare_data(task, tokenizer, data, max_seq_length, teacher.seed)
    # The reward holdout is carved off the full split before subsampling: give it back to the
    # teacher, but never more rows than data.max_train_samples.
    train_sets = [prepared.train] + ([prepared.holdout] if prepared.holdout is not None and len(prepared.holdout) else [])
    rows = [(ds, i) for ds in train_sets for i in range(len(ds))][: data.max_train_samples]
    lengths = [int(x) for ds in train_sets for x in ds["length"]][: len(rows)]
    if not rows:
        raise ValueError(f"{task}: no training rows (data.max_train_samples={data.max_train_samples})")
    collate = make_collator(tokenizer)

    torch.manual_seed(teacher.seed)  # the fresh classification head
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_teacher(teacher.model, spec, attentions=False)  # SDPA: fine-tuning never needs attention maps
    model.to(device).train()
    steps_per_epoch = math.ceil(len(rows) / teacher.batch_size)
    total_steps = max(1, math.ceil(teacher.epochs * steps_per_epoch))
    optimizer = _optimizer(model, teacher.lr, teacher.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(teacher.warmup_ratio * total_steps), total_steps)
    gen = torch.Generator().manual_seed(teacher.seed)

    bar = tqdm(total=total_steps, desc=f"teacher {task}", disable=not progress, dynamic_ncols=True)
    step, epoch, running = 0, 0, None
    while step < total_steps:
        for batch_rows in bucketed_batches(lengths, teacher.batch_size, gen):
            if step >= total_steps:
                break
            batch = collate([rows[i][0][rows[i][1]] for i in batch_rows])
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids", "labels")
                      if k in batch}
            loss = model(**inputs).loss
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
    train_seconds = time.perf_counter() - start

    metrics, score = evaluate(task, model, prepared.dev, collate)
    info = {
        "task": task,
        "model": teacher.model,
        "resolved_model": resolve_model(teacher.model),
        "metrics": metrics,
        "score": score,
        "metric_name": "+".join(spec.metrics),
        "seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start - train_seconds,
        "train_steps": total_steps,
        "train_rows": len(rows),
        "dev_rows": {k: len(v) for k, v in prepared.dev.items()},
        "hyperparameters": {k: getattr(teacher, k) for k in HYPERPARAMETERS},
        "max_seq_length": int(max_seq_length),
        "data": data.model_dump(),
        "key": teacher_key(task, teacher, data, max_seq_length),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return TeacherResult(out, metrics, score, train_seconds, info)


def _evaluate_finetuned(task: str, path: str, run: RunConfig, root: Path) -> TeacherResult:
    """Score a user-given fine-tuned teacher once; the metrics are cached beside the teachers, not in its folder."""
    resolved = Path(resolve_model(path))
    files = sorted(resolved.glob("*.safetensors")) + sorted(resolved.glob("*.bin"))
    key = {"path": str(resolved), "task": task, "max_seq_length": run.train.max_seq_length,
           "max_eval_samples": run.data.max_eval_samples,
           "files": [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cached = root / "evaluated" / f"{task}-{digest}.json"
    if cached.is_file():
        info = json.loads(cached.read_text())
        return TeacherResult(resolved, info["metrics"], float(info["score"]), 0.0, info)
    start = time.perf_counter()
    tokenizer = load_tokenizer(str(resolved))
    prepared = prepare_data(task, tokenizer, run.data, run.train.max_seq_length, run.teacher.seed)
    model = load_teacher(str(resolved), get_task(task), attentions=False)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    metrics, score = evaluate(task, model, prepared.dev, make_collator(tokenizer))
    info = {"task": task, "path": str(resolved), "metrics": metrics, "score": score,
            "eval_seconds": time.perf_counter() - start, "key": key}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cached)
    return TeacherResult(resolved, metrics, score, 0.0, info)


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
