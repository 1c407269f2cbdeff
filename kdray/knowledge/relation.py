"""``relation`` (RelK): match the flow between layers, as FSP matrices (Yim et al. 2017).

The FSP matrix of two layers a, b of one example is ``G = Σ_t h_a[t]ᵀ h_b[t] / n``
over its n real tokens (padding masked), a ``[H, H]`` Gram matrix. The loss is the
MSE between the student's FSP matrices of consecutive mapped layers and the
teacher's of the layers they map to. The chain starts at the embedding output
(layer 0 ↔ 0), so a 1-layer student still has one pair; student states are first
projected to the teacher's width when widths differ.

Two exact ways to compute it (:func:`fsp_loss` picks the cheaper by shape):

- ``direct``: build the ``[B, H, H]`` FSP matrices and their difference
  (``O(T·H²)`` per pair, and ``[B, H, H]`` temporaries larger than the hidden states when T < H);
- ``gram``: with ``A, B`` the masked student states of a pair and ``C, D`` the teacher's,
  ``‖AᵀB − CᵀD‖² = Σ (AAᵀ)⊙(BBᵀ) − 2 Σ (ACᵀ)⊙(BDᵀ) + Σ (CCᵀ)⊙(DDᵀ)`` uses only ``[B, T, T]``
  token Gram products (``O(T²·H)``), and each layer's Grams serve both pairs it is part of.
  The last, teacher-only term carries no gradient, but the loop reports every kind's loss
  value in its traces, so it is computed too (no grad, one ``T×T`` product per chain layer)
  and the value equals the direct one to float tolerance (``tests/test_relation.py``). The
  teacher-output cache stores it per row for consecutive cached layers (``ModelOutputs.fsp_sq``),
  so a cached step reads it instead (1.6 of the gram path's 8.1 GFLOP at MiniLM's shape).

The expansion subtracts large terms, so the gram path runs in fp32 even under autocast
(in bf16 it would lose the loss entirely). Its gradient is as accurate as the direct path's
(both cancel ``O(‖G‖·eps)``); its value's absolute error is ``O(‖G‖²·eps)``, so when the FSP
matrices nearly match (relative difference under ~1e-3) the reported value is noise around 0,
clamped at 0 per example.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kdray.knowledge.base import (
    Knowledge,
    KnowledgeContext,
    ModelOutputs,
    Needs,
    projection,
    register_knowledge,
)

FSP_METHODS = ("auto", "direct", "gram")


def fsp_matrix(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, Ha, Hb]`` FSP matrices of ``a`` ``[B, T, Ha]`` and ``b`` ``[B, T, Hb]``, normalised by real length."""
    mask = attention_mask[:, : a.shape[1]].to(torch.float32).unsqueeze(-1)
    gram = torch.einsum("bti,btj->bij", a.float() * mask, b.float() * mask)
    return gram / mask.sum(dim=1, keepdim=True).clamp_min(1.0)


def fsp_loss_direct(
    students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor], attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over consecutive chain pairs of the MSE between student and teacher FSP matrices."""
    losses = []
    for i in range(len(students) - 1):
        g_s = fsp_matrix(students[i], students[i + 1], attention_mask)
        g_t = fsp_matrix(teachers[i], teachers[i + 1], attention_mask)
        losses.append((g_s - g_t).pow(2).mean())
    return torch.stack(losses).mean()


def _pair_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example Frobenius inner product of two ``[B, T, T]`` tensors."""
    return (x * y).sum(dim=(1, 2))


class _StudentGrams(torch.autograd.Function):
    """``[AAᵀ | ACᵀ]`` (``[B, T, 2T]``) in one matmul, for student ``A`` and constant teacher ``C``.

    Autograd would differentiate ``AAᵀ`` as a product of two different tensors (two matmuls);
    its gradient is ``(G + Gᵀ)A``, so with ``ACᵀ``'s the whole backward is one matmul.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        both = torch.cat([a, c], dim=1)  # [B, 2T, H]
        ctx.save_for_backward(both)
        return torch.bmm(a, both.mT)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (both,) = ctx.saved_tensors
        t_len = grad.shape[1]
        g_s, g_x = grad[:, :, :t_len], grad[:, :, t_len:]
        return torch.bmm(torch.cat([g_s + g_s.mT, g_x], dim=2), both), None


@torch.no_grad()
def chain_fsp_sq(states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``‖cᵀd‖²`` per example for each consecutive pair of masked ``[B, T, H]`` states along a chain, from
    ``[B, T, T]`` Grams, each layer's computed once: the gram path's teacher-only term, which the
    teacher-output cache stores per row."""
    grams = [x @ x.mT for x in states]
    return [_pair_dot(grams[i], grams[i + 1]) for i in range(len(grams) - 1)]


def fsp_loss_gram(
    students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor], attention_mask: torch.Tensor,
    teacher_sq: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`fsp_loss_direct` computed exactly from ``[B, T, T]`` token Gram products (see the module docstring).

    Teacher states are constants (no gradient flows to them), as the loop's no-grad teacher outputs are.
    ``teacher_sq``: each pair's teacher-only term per example (:func:`chain_fsp_sq` of the masked states), when
    the teacher-output cache holds it; computed here otherwise.
    """
    first = students[0]
    t_len = first.shape[1]
    mask = attention_mask[:, :t_len].to(torch.float32).unsqueeze(-1)
    n = mask.sum(dim=1).squeeze(-1).clamp_min(1.0)  # [B]
    with torch.autocast(first.device.type, enabled=False):
        a = [s.float() * mask for s in students]
        c = [t.detach().float() * mask for t in teachers]
        grams = [_StudentGrams.apply(x, y) for x, y in zip(a, c)]
        if teacher_sq is None:
            teacher_sq = chain_fsp_sq(c)
        losses = []
        for i in range(len(a) - 1):
            (s_i, x_i), (s_j, x_j) = (grams[k].split(t_len, dim=2) for k in (i, i + 1))
            sq = _pair_dot(s_i, s_j) - 2 * _pair_dot(x_i, x_j) + teacher_sq[i].float()
            sq = sq.clamp_min(0.0)  # ‖G_s − G_t‖² · n² per example; below 0 only by rounding
            size = first.shape[0] * a[i].shape[-1] * a[i + 1].shape[-1]
            losses.append((sq / n.pow(2)).sum() / size)
        return torch.stack(losses).mean()


def gram_is_cheaper(seq_len: int, width: int, chain_layers: int) -> bool:
    """Whether the token-Gram path costs fewer FLOPs than the ``[H, H]`` one for this shape.

    Forward and backward, per example, in units of 2·T·H² or 2·T²·H multiply-adds: ``direct`` costs
    4 per pair (student and teacher FSP matrices, two input gradients of the student's), ``gram``
    5 per chain layer (``[AAᵀ | ACᵀ]`` forward and its one-matmul backward, the teacher's ``CCᵀ``).
    Measured on CPU (``kdray.perf.relation_cost``) the crossover sits where this model puts it.
    """
    pairs = chain_layers - 1
    return 5 * chain_layers * seq_len**2 * width < 4 * pairs * seq_len * width**2


def fsp_loss(
    students: Sequence[torch.Tensor],
    teachers: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    method: str = "auto",
    teacher_sq: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Relation loss over a chain of layers: mean over consecutive pairs of MSE(FSP_student, FSP_teacher).

    Args:
        students: ``[B, T, H]`` student states along the chain, already projected to the teacher's width.
        teachers: the teacher's ``[B, T, H]`` states of the layers they map to.
        attention_mask: ``[B, T]`` real tokens (1) and padding (0).
        method: ``direct`` (``[H, H]`` matrices), ``gram`` (``[T, T]`` products) or ``auto``
            (:func:`gram_is_cheaper` on the shape, in fp32 only). All three give the same value and gradients.
        teacher_sq: the gram path's teacher-only term per pair, precomputed (``ModelOutputs.fsp_sq``).
    """
    if method not in FSP_METHODS:
        raise ValueError(f"unknown FSP method {method!r}; known: {', '.join(FSP_METHODS)}")
    if len(students) != len(teachers) or len(students) < 2:
        raise ValueError(f"fsp_loss needs equally long chains of >= 2 layers, got {len(students)} and {len(teachers)}")
    if method == "auto":
        _, t_len, width = students[0].shape
        # Under reduced-precision autocast (GPUs) the direct path runs its matmuls in bf16/fp16, while
        # the gram path must run in fp32: keep the direct path there until a GPU measurement says otherwise.
        low_precision = torch.is_autocast_enabled(students[0].device.type)
        cheaper = gram_is_cheaper(t_len, width, len(students))
        method = "gram" if cheaper and not low_precision else "direct"
    if method == "gram":
        return fsp_loss_gram(students, teachers, attention_mask, teacher_sq)
    return fsp_loss_direct(students, teachers, attention_mask)


@register_knowledge("relation")
class RelationKnowledge(Knowledge):
    """MSE between student and teacher FSP matrices of consecutive mapped layers."""

    def __init__(self, ctx: KnowledgeContext) -> None:
        super().__init__(ctx)
        self.proj = projection(ctx.student_width, ctx.teacher_width)

    @property
    def chain(self) -> list[tuple[int, int]]:
        return [(0, 0), *self.ctx.layer_map]

    def needs(self) -> Needs:
        return Needs(
            teacher=True,
            student_hidden=frozenset(s for s, _ in self.chain),
            teacher_hidden=frozenset(t for _, t in self.chain),
        )

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        assert teacher is not None, "relation needs teacher outputs"
        # each chain layer is projected once (it takes part in up to two pairs)
        students = [self.proj(student.hidden[s]) for s, _ in self.chain]
        teachers = [teacher.hidden[t] for _, t in self.chain]
        layers = [t for _, t in self.chain]
        cached = [teacher.fsp_sq.get(pair) for pair in zip(layers, layers[1:])]
        teacher_sq = cached if all(x is not None for x in cached) else None
        return fsp_loss(students, teachers, batch["attention_mask"], teacher_sq=teacher_sq)
