"""The training toolkit under both the teacher stage (``kdray.teacher``) and the loop (``kdray.distill``).

Fine-tuning a teacher and distilling a student build the same things, so both take them from here:
seeding, the device, mixed precision, AdamW's parameter groups, the linear LR schedule, evaluation into
metrics with one key convention, and the identity of a weights folder. Length-bucketed batching lives
beside the loop's batch order in :mod:`kdray.loop_data` (:func:`~kdray.loop_data.bucketed_batches`).

Where the two stages differ, the difference is a parameter here and nowhere else:

- **warm-up** (:func:`linear_schedule`): the loop's ``warmup="kdray"`` ramps ``(step + 1) / (warmup + 1)``,
  so its first step already learns; the teacher's ``warmup="hf_linear"`` is ``transformers``'
  ``get_linear_schedule_with_warmup`` (``step / warmup``, a first step at LR 0). Cached teachers are keyed
  by their hyper-parameters, not by the schedule's code, so the teacher keeps its formula and every
  teacher already fine-tuned stays the one its key names.

Everything else is one rule for both: no weight decay on 1-D parameters (biases, LayerNorm weights) and
on names containing ``LayerNorm``; NumPy seeded with ``seed % 2**32``; metric keys ``{metric}`` for one dev
split and ``{split}_{metric}`` for several (MNLI). Teacher ``metrics.json`` files written before this
convention used ``{split}/{metric}``; :func:`canonical_metrics` reads both.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping

import numpy as np
import torch
from torch import nn

from kdray.config import TrainConfig
from kdray.glue import compute_metrics, get_task, primary_score

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]
Warmup = Literal["kdray", "hf_linear"]


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators, so a run is reproducible from its seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(use_gpu: bool = True) -> torch.device:
    """This process's GPU (``LOCAL_RANK`` picks it under torch.distributed) when allowed and present, else the CPU."""
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32.

    ``auto``: bf16 on GPUs that support it, else fp32 (CPU runs stay fp32 unless asked: bf16 changes the
    numerics, and its speed-up needs a CPU with native bf16 dot products, e.g. AVX512-BF16 or AMX).
    ``bf16`` is honoured on CPUs too (torch's CPU autocast); ``fp16`` needs a GPU.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("train.precision: fp16 needs a CUDA GPU (this run is on the CPU); "
                             "allowed here: auto, fp32, bf16")
        return torch.float16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def bf16_is_slow_here(device: torch.device) -> bool:
    """Whether bf16 autocast on ``device`` would run its matmuls on torch's scalar fallback.

    torch routes CPU bf16 matmuls through oneDNN only where oneDNN has a bf16 path (AVX512 and newer); elsewhere
    they fall back to a slow loop: on an AVX2-only EPYC a 1024² bf16 matmul ran at 0.8 GFLOP/s against 70 in
    fp32 (one thread), so a bf16 study there would take weeks instead of hours.
    """
    if device.type != "cpu":
        return False
    try:
        supported = torch.ops.mkldnn._is_mkldnn_bf16_supported
    except (AttributeError, RuntimeError):  # a torch without the query: assume the fast path
        return False
    return not supported()


def slow_bf16_warning(trains: Iterable[TrainConfig], device: torch.device) -> str | None:
    """The warning for runs that ask for bf16 on a CPU that has no fast bf16 path (None when there is none)."""
    keys = sorted({f"train.{key}" for tc in trains for key in ("precision", "teacher_precision")
                   if getattr(tc, key) == "bf16"})
    if not keys or not bf16_is_slow_here(device):
        return None
    return (f"[kdray] warning: {' and '.join(keys)}: bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}, "
            "no oneDNN bf16 path) runs matmuls on a slow fallback, about 90x slower than fp32 (0.8 against 70 "
            "GFLOP/s measured on an AVX2 EPYC); use fp32 here (--set train.precision=fp32), or bf16 on a CPU "
            "with AVX512 or AMX, or a GPU")


def autocast_for(device: torch.device, dtype: torch.dtype | None) -> Autocast:
    """The one autocast context of a run (a no-op for fp32)."""
    return functools.partial(torch.autocast, device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters of ``modules``, in order: decayed matrices, then the rest.

    Biases and LayerNorm weights are not decayed (the BERT recipe). The ``.bias`` clause only matters for a
    bias of more than one dimension, which no model here has, so the loop and the teacher get the same groups.
    """
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


FUSED_ADAMW_DEVICES = frozenset({"cpu", "cuda"})


def fused_adamw_applies(params: Iterable[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW can take ``params``: floating point, all on one CPU or CUDA device.

    The fused kernel updates each tensor in one pass instead of a dozen elementwise ops; on one CPU core the
    3-layer MiniLM student's AdamW step took 98-164 ms per tensor (torch's CPU default) against 17-18 ms fused,
    up to a quarter of a short-row training step (README, Performance, "The optimizer step").
    """
    params = list(params)
    devices = {(p.device.type, p.device.index) for p in params}
    return (len(devices) == 1 and next(iter(devices))[0] in FUSED_ADAMW_DEVICES
            and all(p.is_floating_point() for p in params))


def build_adamw(params: list[torch.Tensor] | list[dict[str, Any]], **options: Any) -> torch.optim.AdamW:
    """torch's AdamW over ``params`` (tensors or parameter groups), fused where :func:`fused_adamw_applies`."""
    tensors = [p for group in params for p in group["params"]] if params and isinstance(params[0], dict) else params
    return torch.optim.AdamW(params, fused=fused_adamw_applies(tensors) or None, **options)


def adamw(modules: Iterable[nn.Module], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of ``modules`` (student and knowledge projections, or a teacher), fused
    where torch has the kernel (:func:`build_adamw`)."""
    return build_adamw(param_groups(modules, weight_decay), lr=lr)


def linear_schedule(
    optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float, warmup: Warmup = "kdray"
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``int(steps * warmup_ratio)`` steps, then linear decay to 0 at ``steps``.

    ``warmup`` picks the ramp (module docstring): ``"kdray"`` (the loop) or ``"hf_linear"`` (the teacher;
    step for step what ``transformers.get_linear_schedule_with_warmup`` gives).
    """
    n_warmup = int(steps * warmup_ratio)
    ramp = _ramp_kdray if warmup == "kdray" else _ramp_hf
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_lr_factor, steps, n_warmup, ramp))


def _ramp_kdray(step: int, n_warmup: int) -> float:
    return (step + 1) / (n_warmup + 1)


def _ramp_hf(step: int, n_warmup: int) -> float:
    return float(step) / float(max(1, n_warmup))


def _lr_factor(steps: int, n_warmup: int, ramp: Callable[[int, int], float], step: int) -> float:
    if step < n_warmup:
        return ramp(step, n_warmup)
    return max(0.0, float(steps - step) / float(max(1, steps - n_warmup)))


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Evaluation:
    """Dev results: the task's primary score (mean over dev splits) and its metrics (one key convention)."""

    score: float
    metrics: dict[str, float]


def split_metrics(split: str, metrics: Mapping[str, float], n_splits: int) -> dict[str, float]:
    """One split's metrics under kdray's keys: ``{metric}`` for a single dev split, else ``{split}_{metric}``."""
    return {(k if n_splits == 1 else f"{split}_{k}"): float(v) for k, v in metrics.items()}


def canonical_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics read back from a file, old ``{split}/{metric}`` keys (teachers before the toolkit) renamed."""
    return {k.replace("/", "_"): float(v) for k, v in metrics.items()}


def evaluate(
    task: str, model: nn.Module, dev: Mapping[str, Any], collate: Callable, batch_size: int,
    device: torch.device | None = None, rank: int = 0, world: int = 1,
) -> Evaluation:
    """The official dev metrics of ``model`` on every dev split (sharded over ranks) and the primary score."""
    from kdray.loop_data import predict  # here: a sweep's driver imports this module for its bf16 check alone

    spec = get_task(task)
    device = device if device is not None else next(model.parameters()).device
    metrics: dict[str, float] = {}
    scores = []
    for split, ds in dev.items():
        preds, labels, _ = predict(model, ds, collate, batch_size, device, spec.is_regression, rank, world)
        m = compute_metrics(task, preds, labels)
        scores.append(primary_score(task, m))
        metrics.update(split_metrics(split, m, len(dev)))
    return Evaluation(float(np.mean(scores)), metrics)


def weight_files(folder: str | Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of a model folder's weight files: the identity cache keys take for its weights."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    return [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
