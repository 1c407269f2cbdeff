"""One distillation step and one selector state, as functions (what ``kdray.bench`` times).

``kdray.distill.train``'s inner loop calls these, and so does the benchmark, so it
measures the same code users run: the teacher-output source (cache when
it covers the step's needs, else a live no-grad forward), the phase state the
selector sees, and one optimisation step on the selected kinds only. They use the
same primitives as the loop (``run_model``, ``needs_of``, the knowledge modules,
``TeacherOutputCache``) and take the loop's objects as arguments.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch
import torch.distributed as torch_dist
from torch import nn

from kdray.knowledge import ModelOutputs, needs_of, run_model
from kdray.selection.base import PhaseState
from kdray.teacher_outputs import TeacherOutputCache

TeacherFn = Callable[[dict[str, torch.Tensor], Sequence[int], frozenset[int], frozenset[int]], ModelOutputs]


def no_autocast() -> contextlib.AbstractContextManager[Any]:
    """The fp32 autocast context (what the loop uses on CPUs)."""
    return contextlib.nullcontext()


def teacher_source(
    teacher: nn.Module,
    cache: TeacherOutputCache | None,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = no_autocast,
) -> TeacherFn:
    """``fn(batch, rows, hidden, attentions)``: cached teacher outputs when the cache covers them, else a live forward."""

    def outputs(batch: dict[str, torch.Tensor], rows: Sequence[int], hidden: frozenset[int], attn: frozenset[int]) -> ModelOutputs:
        if cache is not None and cache.covers(hidden, attn):
            return cache.outputs(rows, batch["input_ids"].shape[1], hidden, device)
        with torch.no_grad(), autocast():
            return run_model(teacher, batch, hidden, attn)

    return outputs


def phase_state(
    student: nn.Module,
    teacher_fn: TeacherFn,
    needs_state: bool,
    batch: dict[str, torch.Tensor],
    rows: Sequence[int],
    n_student: int,
    n_teacher: int,
    step: int,
    steps: int,
    losses: dict[str, float],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = no_autocast,
) -> PhaseState:
    """The selector's view at a phase boundary: final-layer [CLS] of both models (if it needs them)."""
    t_cls = s_cls = None
    if needs_state:
        was = student.training
        student.eval()
        with torch.no_grad(), autocast():
            s_cls = run_model(student, batch, {n_student}).hidden[n_student][:, 0].float()
            t_cls = teacher_fn(batch, rows, frozenset({n_teacher}), frozenset()).hidden[n_teacher][:, 0].float()
        student.train(was)
    return PhaseState(teacher_cls=t_cls, student_cls=s_cls, losses=losses, progress=step / steps, step=step)


def sync_knowledge_grads(knowledge: nn.Module, world: int) -> None:
    """Projections live outside the DDP-wrapped student, so average their gradients by hand."""
    if world == 1:
        return
    for p in knowledge.parameters():
        if p.grad is not None:
            torch_dist.all_reduce(p.grad)
            p.grad /= world


def distill_step(
    model: nn.Module,
    student: nn.Module,
    knowledge: nn.ModuleDict,
    pool: Sequence[str],
    weights: dict[str, float],
    batch: dict[str, torch.Tensor],
    rows: Sequence[int],
    teacher_fn: TeacherFn,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    max_grad_norm: float,
    world: int = 1,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = no_autocast,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step on the kinds with a non-zero weight; returns (weighted loss, per-kind losses).

    ``model`` is the (possibly DDP-wrapped) student that runs the forward, ``student`` the bare one.
    Kinds with weight 0 are not computed, and the teacher is not run when no selected kind needs it.
    """
    need = needs_of(knowledge, weights)
    with autocast():
        s_out = run_model(model, batch, need.student_hidden, need.student_attentions)
        t_out = teacher_fn(batch, rows, need.teacher_hidden, need.teacher_attentions) if need.teacher else None
        losses = {k: knowledge[k](s_out, t_out, batch) for k in pool if weights.get(k, 0.0) > 0}
        loss = sum(weights[k] * v for k, v in losses.items())
    scaler.scale(loss).backward()
    sync_knowledge_grads(knowledge, world)
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([*student.parameters(), *knowledge.parameters()], max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, losses
