"""One distillation step and one selector state, as functions (what ``kdray.bench`` times).

The training loop (``kdray.loop``, under ``kdray.distill.train``) calls these, and so does the benchmark, so it
measures the same code users run: the teacher-output source (cache when
it covers the step's needs, else a live no-grad forward), the phase state the
selector sees, and one optimisation step on the selected kinds only. They use the
same primitives as the loop (``run_model``, ``needs_of``, the knowledge modules,
``TeacherOutputCache``) and take the loop's objects as arguments.

The selector's state at a phase boundary comes from the phase's last training step
(``distill_step(..., state_layers=...)``): the student's final layer is part of the
forward that step runs anyway, and so is the teacher's whenever a selected kind ran
the teacher. Only a run's first decision, with no step behind it, pays for its own
forwards (``phase_state``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as torch_dist
from torch import nn

from kdray.knowledge import LossNormalizer, ModelOutputs, needs_of, run_model
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
    cls_top: bool = True,
) -> TeacherFn:
    """``fn(batch, rows, hidden, attentions)``: cached teacher outputs when the cache covers them, else a live forward
    (``cls_top``: whose top layer computes its [CLS] row only when nothing else of it is read, :func:`run_model`)."""

    def outputs(batch: dict[str, torch.Tensor], rows: Sequence[int], hidden: frozenset[int], attn: frozenset[int]) -> ModelOutputs:
        if cache is not None and cache.covers(hidden, attn):
            return cache.outputs(rows, batch["input_ids"].shape[1], hidden, device, attn)
        with torch.no_grad(), autocast():
            return run_model(teacher, batch, hidden, attn, cls_top)

    return outputs


def forked_rng(module: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """Run a side forward (state, probe) with dropout on, leaving the training RNG stream exactly as it was."""
    device = next(module.parameters()).device
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


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
    needs_logits: bool = False,
) -> PhaseState:
    """The selector's view at a segment's first decision: final-layer [CLS] (and logits) of both models.

    Every later state comes from a phase's last training forward (train mode, before the update), so this
    one runs in train mode too (issue #15: one forward mode for every state), under :func:`forked_rng` so
    the training steps' dropout masks stay those of a run without it.
    """
    t_cls = s_cls = s_logits = t_logits = None
    if needs_state or needs_logits:
        s_hidden = frozenset({n_student}) if needs_state else frozenset()
        t_hidden = frozenset({n_teacher}) if needs_state else frozenset()
        with forked_rng(student), torch.no_grad(), autocast():
            s_out = run_model(student, batch, s_hidden)
            t_out = teacher_fn(batch, rows, t_hidden, frozenset())
        if needs_state:
            s_cls, t_cls = s_out.hidden[n_student][:, 0].float(), t_out.hidden[n_teacher][:, 0].float()
        if needs_logits:
            s_logits, t_logits = s_out.logits.detach().float(), t_out.logits.detach().float()
    return PhaseState(teacher_cls=t_cls, student_cls=s_cls, losses=losses, progress=step / steps, step=step,
                      student_logits=s_logits, teacher_logits=t_logits)


def probe_losses(
    student: nn.Module,
    knowledge: nn.ModuleDict,
    kinds: Sequence[str],
    batch: dict[str, torch.Tensor],
    rows: Sequence[int],
    teacher_fn: TeacherFn,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = no_autocast,
) -> dict[str, torch.Tensor]:
    """Each kind's unweighted loss from one train-mode forward on a probe batch, with only the outputs those
    kinds need, under :func:`forked_rng` (the training steps' dropout stream stays as it was): what
    :func:`kind_gradients` differentiates and :mod:`kdray.kind_costs` times."""
    need = needs_of(knowledge, {k: 1.0 for k in kinds})
    with forked_rng(student), autocast():
        s_out = run_model(student, batch, need.student_hidden, need.student_attentions)
        t_out = teacher_fn(batch, rows, need.teacher_hidden, need.teacher_attentions) if need.teacher else None
        return {k: knowledge[k](s_out, t_out, batch) for k in kinds}


def kind_gradients(
    student: nn.Module,
    knowledge: nn.ModuleDict,
    kinds: Sequence[str],
    batch: dict[str, torch.Tensor],
    rows: Sequence[int],
    teacher_fn: TeacherFn,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = no_autocast,
    cosines: bool = False,
) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Each kind's unweighted-loss gradient norm on the student's parameters, and (``cosines``) the pairwise
    cosines of those gradients, on one probe batch: one train-mode forward (:func:`forked_rng`), one
    backward per kind, no parameter's ``.grad`` touched. The norms are :func:`kdray.knowledge.kind_grad_norms`'s.
    """
    params = [p for p in student.parameters() if p.requires_grad]
    losses = probe_losses(student, knowledge, kinds, batch, rows, teacher_fn, autocast)
    flat: dict[str, torch.Tensor] = {}
    for kind, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat[kind] = torch.cat([(torch.zeros_like(p) if g is None else g).detach().float().reshape(-1)
                                for g, p in zip(grads, params)])
    norms = {k: float(v.norm()) for k, v in flat.items()}
    cos: dict[tuple[str, str], float] = {}
    if cosines:
        for i, a in enumerate(kinds):
            for b in kinds[i + 1:]:
                denom = max(norms[a] * norms[b], 1e-30)
                cos[(a, b)] = float(flat[a] @ flat[b]) / denom
    return norms, cos


class StepResult(NamedTuple):
    """What one optimisation step gives back.

    Attributes:
        loss: the weighted loss (a device tensor; reading it syncs).
        losses: unweighted loss per computed kind.
        teacher_cls / student_cls: final-layer [CLS] vectors of this step's batch, ``[B, H]`` fp32,
            when the step was asked for them (``state_layers``), else None.
        student_logits / teacher_logits: both models' logits on the batch (``with_logits``; the teacher's
            None when no selected kind ran it), else None.
    """

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    teacher_cls: torch.Tensor | None = None
    student_cls: torch.Tensor | None = None
    student_logits: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None


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
    state_layers: tuple[int, int] | None = None,
    with_logits: bool = False,
    normalizer: LossNormalizer | None = None,
    cls_top: bool = True,
) -> StepResult:
    """One optimisation step on the kinds with a non-zero weight.

    ``model`` is the (possibly DDP-wrapped) student that runs the forward, ``student`` the bare one.
    Kinds with weight 0 are not computed, and the teacher is not run when no selected kind needs it.
    ``state_layers`` = (student layers, teacher layers) asks for both final-layer [CLS] vectors as well
    (the selector's state at a phase end): the student's come from this step's own forward (train mode,
    before the update), the teacher's from its forward here, or, when no selected kind ran it, from the
    cache or one no-grad forward. ``with_logits`` also returns both models' logits (the same forward's).
    ``normalizer`` (``knowledge.normalize``) scales each kind's loss in the weighted sum; with mode ``none``
    (or None) the sum is exactly ``sum(weight * loss)``, as before the option. ``cls_top=False`` runs the
    student's full top layer even when only its [CLS] row is read (the bench's reference step).
    """
    need = needs_of(knowledge, weights)
    s_hidden, t_hidden = need.student_hidden, need.teacher_hidden
    if state_layers is not None:
        s_hidden, t_hidden = s_hidden | {state_layers[0]}, t_hidden | {state_layers[1]}
    t_cls = s_cls = None
    with autocast():
        s_out = run_model(model, batch, s_hidden, need.student_attentions, cls_top)
        t_out = teacher_fn(batch, rows, t_hidden, need.teacher_attentions) if need.teacher else None
        losses = {k: knowledge[k](s_out, t_out, batch) for k in pool if weights.get(k, 0.0) > 0}
        if normalizer is None or normalizer.mode == "none":
            loss = sum(weights[k] * v for k, v in losses.items())
        else:
            scales = normalizer.scales(losses)
            loss = sum(weights[k] * scales[k] * v for k, v in losses.items())
        s_logits = s_out.logits.detach().float() if with_logits else None
        t_logits = t_out.logits.detach().float() if with_logits and t_out is not None else None
        if state_layers is not None:
            s_cls = s_out.hidden[state_layers[0]][:, 0].detach().float()
            if t_out is None:
                t_out = teacher_fn(batch, rows, frozenset({state_layers[1]}), frozenset())
            t_cls = t_out.hidden[state_layers[1]][:, 0].detach().float()
    scaler.scale(loss).backward()
    sync_knowledge_grads(knowledge, world)
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([*student.parameters(), *knowledge.parameters()], max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss, losses, t_cls, s_cls, s_logits, t_logits)
