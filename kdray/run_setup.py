"""What stays fixed for one distillation run: data, teacher, models, knowledge, cache, reward set, precision.

:func:`set_up` builds it once from a validated :class:`~kdray.config.RunConfig`, in an order that is
part of the run's numbers (the global RNG is seeded, then the teacher is found, the selector built,
the student and the knowledge projections initialised from ``train.seed``). What changes while the
run trains is :class:`kdray.state.TrainingState`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as torch_dist
from torch import nn

from kdray.config import RunConfig
from kdray.glue import TaskSpec, get_task, make_collator, prepare_data
from kdray.glue.prepare import PreparedData
from kdray.knowledge import KnowledgeContext, build_knowledge, needs_of
from kdray.loop_data import BatchOrder, RewardSet, collate_rows, dist_info, to_device
from kdray.models import build_student, load_teacher, load_tokenizer
from kdray.paths import cache_root
from kdray.selection.base import Selector, build_selector
from kdray.step import TeacherFn, teacher_source
from kdray.teacher import get_teacher
from kdray.teacher_outputs import TeacherOutputCache, attention_bytes, build_teacher_cache, cache_key
from kdray.teacher_precision import live_teacher
from kdray.training import (Autocast, amp_dtype, autocast_for, evaluate, pick_device, seed_everything,
                            slow_bf16_warning, weight_files)


@dataclass
class Models:
    """The teacher, the student (bare, and the module its training forward runs through) and the projections."""

    teacher: nn.Module
    student: nn.Module
    forward: nn.Module  # the student, DDP-wrapped on several ranks and compiled when train.compile is on
    knowledge: nn.ModuleDict
    init_student: dict[str, torch.Tensor]  # every segment restarts from these
    init_knowledge: dict[str, torch.Tensor]

    @property
    def layers(self) -> tuple[int, int]:
        """(student layers, teacher layers): the final layers whose [CLS] vectors are the selector's state."""
        return self.student.config.num_hidden_layers, self.teacher.config.num_hidden_layers


@dataclass
class RunSetup:
    """Everything a run reads but never changes."""

    config: RunConfig
    spec: TaskSpec
    device: torch.device
    rank: int
    world: int
    data: PreparedData
    collate: Callable
    order: BatchOrder
    segments: list[int]  # steps of each segment: the stage-1 episodes, then the final run
    teacher_path: str
    teacher_score: float
    selector: Selector  # built here (its kinds decide the attention kernel); it learns inside TrainingState
    models: Models
    teacher_fn: TeacherFn
    cache: TeacherOutputCache | None
    reward_set: RewardSet | None
    autocast: Autocast
    amp_dtype: torch.dtype | None

    @property
    def final_segment(self) -> int:
        return len(self.segments) - 1

    @property
    def total_steps(self) -> int:
        """Steps of the final run."""
        return self.segments[-1]

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """One training batch of ``rows`` on the run's device."""
        return to_device(collate_rows(self.data.train, rows, self.collate), self.device)


def set_up(config: RunConfig, teacher_path: str | None = None) -> RunSetup:
    """Build a run's fixed parts: data, teacher, selector, models, knowledge, cache, reward set and precision."""
    tc = config.train
    rank, world = dist_info()
    device = pick_device(config.resources.use_gpu)
    seed_everything(tc.seed)
    spec = get_task(config.task)
    teacher_score = math.nan
    if teacher_path is None:
        found = get_teacher(config.task, config, cache_root())
        teacher_path, teacher_score = str(found.path), float(found.score)
    tokenizer = load_tokenizer(teacher_path)
    data = prepare_data(config.task, tokenizer, config.data, tc.max_seq_length, tc.seed)
    collate = make_collator(tokenizer)
    # selector first: its kinds decide whether the models need (slower) eager attention
    selector = build_selector(config.selector, config.knowledge.pool, tc.seed, task=config.task)
    n_episodes = config.selector.episodes if selector.learns else 0
    order = _batch_order(config, data, n_episodes, rank, world)
    total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * order.per_epoch))
    episode_steps = config.selector.episode_steps or max(1, total_steps // 3)
    teacher = load_teacher(teacher_path, spec, attentions="attention" in selector.pool).to(device).eval()
    teacher.requires_grad_(False)
    if math.isnan(teacher_score):
        teacher_score = _teacher_score(teacher_path, teacher, data, collate, tc.eval_batch_size, device, rank, world)
    models = _models(config, spec, teacher, selector, device, world)
    cache = _teacher_cache(config, teacher_path, models, selector, data, collate, device, rank, world)
    dtype = amp_dtype(tc.precision, device)
    slow = slow_bf16_warning([tc], device) if rank == 0 else None
    if slow:
        print(slow, file=sys.stderr, flush=True)
    autocast = autocast_for(device, dtype)
    live, teacher_autocast = live_teacher(models.teacher, tc.teacher_precision, autocast, device)
    return RunSetup(
        config=config, spec=spec, device=device, rank=rank, world=world, data=data, collate=collate, order=order,
        segments=[episode_steps] * n_episodes + [total_steps], teacher_path=teacher_path,
        teacher_score=teacher_score, selector=selector, models=models,
        teacher_fn=teacher_source(live, cache, device, teacher_autocast), cache=cache,
        reward_set=_reward_set(config, selector, data, collate, device), autocast=autocast, amp_dtype=dtype,
    )


def _batch_order(config: RunConfig, data: PreparedData, n_episodes: int, rank: int, world: int) -> BatchOrder:
    tc = config.train
    lengths = [int(x) for x in data.train["length"]]
    order = BatchOrder(lengths, tc.batch_size, tc.seed, tc.length_bucketing, n_episodes, rank, world)
    if order.per_epoch == 0:
        raise ValueError(f"{config.task}: {len(lengths)} training rows give no batch of {tc.batch_size} on {world} ranks")
    return order


def _models(config: RunConfig, spec: TaskSpec, teacher: nn.Module, selector: Selector, device: torch.device,
            world: int) -> Models:
    """Student and knowledge projections beside the frozen teacher, seeded from ``train.seed``."""
    torch.manual_seed(config.train.seed)
    student = build_student(teacher, config.student, spec).to(device)
    kctx = KnowledgeContext.between(
        student, teacher, config.knowledge.layer_map, config.knowledge.temperature,
        # the selector may define its own kind set and feature mode (e.g. pkd)
        getattr(selector, "feature_mode", None) or config.knowledge.feature_mode, spec.is_regression)
    knowledge = build_knowledge(selector.pool, kctx).to(device)
    forward: nn.Module = student
    if world > 1:
        forward = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    if config.train.compile:
        forward = torch.compile(forward)
    return Models(teacher, student, forward, knowledge,
                  init_student={k: v.detach().clone() for k, v in student.state_dict().items()},
                  init_knowledge={k: v.detach().clone() for k, v in knowledge.state_dict().items()})


def _teacher_score(path: str, teacher: nn.Module, data: PreparedData, collate: Callable, batch_size: int,
                   device: torch.device, rank: int, world: int) -> float:
    """The teacher's dev score: from its metrics.json when it has one, else evaluated once here."""
    metrics_file = Path(path) / "metrics.json"
    if metrics_file.is_file():
        saved = json.loads(metrics_file.read_text())
        if isinstance(saved.get("score"), (int, float)):
            return float(saved["score"])
    return evaluate(data.spec.name, teacher, data.dev, collate, batch_size, device, rank, world).score


def _teacher_cache(config: RunConfig, teacher_path: str, models: Models, selector: Selector, data: PreparedData,
                   collate: Callable, device: torch.device, rank: int, world: int) -> TeacherOutputCache | None:
    """The teacher-output cache when asked for and some kind needs the teacher (what it does not hold, such
    as attention maps over ``train.teacher_cache_attention_gib``, falls back to the live teacher)."""
    tc = config.train
    pool_needs = needs_of(models.knowledge, {k: 1.0 for k in selector.pool})
    if not (tc.teacher_cache and pool_needs.teacher):
        return None
    layers = set(pool_needs.teacher_hidden) | {models.layers[1]}
    attention_layers = _cached_attention_layers(config, models.teacher, pool_needs.teacher_attentions, data, rank)
    fingerprint = {"path": str(Path(teacher_path).resolve()), "files": weight_files(teacher_path)}
    parts = {"teacher": fingerprint, "task": config.task, "max_len": tc.max_seq_length, "layers": sorted(layers),
             "rows": len(data.train), "data": getattr(data.train, "_fingerprint", None)}
    if attention_layers:  # only then: caches built without attention maps keep their names
        parts["attention_layers"] = sorted(attention_layers)
    folder = cache_root() / "teacher_outputs" / f"{config.task}-{cache_key(parts)}"
    if rank == 0:
        build_teacher_cache(models.teacher, data.train, collate, layers, folder, tc.eval_batch_size, device,
                            attention_layers)
    if world > 1:
        torch_dist.barrier()
    cache = TeacherOutputCache(folder)
    if cache.keep_on(device) and rank == 0:
        print(f"[kdray] teacher-output cache on {device} ({cache.nbytes / 2**20:.0f} MiB)", flush=True)
    return cache


def _cached_attention_layers(config: RunConfig, teacher: nn.Module, needed: frozenset[int], data: PreparedData,
                             rank: int) -> frozenset[int]:
    """The attention layers the cache stores: all the pool needs when their maps fit in
    ``train.teacher_cache_attention_gib``, else none (the attention kind then runs the live teacher)."""
    limit = config.train.teacher_cache_attention_gib
    if not needed:
        return frozenset()
    lengths = [int(x) for x in data.train["length"]]
    size = attention_bytes(lengths, int(teacher.config.num_attention_heads), len(needed)) / 2**30
    if size <= limit:
        return needed
    if rank == 0:
        print(f"[kdray] attention maps not cached: {size:.2f} GiB for {len(lengths)} rows exceeds "
              f"train.teacher_cache_attention_gib={limit:g}; the attention kind runs the live teacher "
              f"(raise the key to cache them)", flush=True)
    return frozenset()


def _reward_set(config: RunConfig, selector: Selector, data: PreparedData, collate: Callable,
                device: torch.device) -> RewardSet | None:
    """The reward set, a fixed subset scored once per phase, when traced or when the selector learns."""
    sc = config.selector
    if not (sc.trace_reward_set or selector.learns):
        return None
    source = data.holdout if sc.reward.reward_set == "train_holdout" else data.dev[data.spec.dev_splits[0]]
    rows = source.select(range(min(sc.reward.eval_examples, len(source))))
    return RewardSet(rows, collate, config.train.eval_batch_size, device)
