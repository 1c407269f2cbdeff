"""``relation`` (RelK): match the flow between layers, as FSP matrices (Yim et al. 2017).

The FSP matrix of two layers a, b of one example is ``G = Σ_t h_a[t]ᵀ h_b[t] / n``
over its n real tokens (padding masked), a ``[H, H]`` Gram matrix. The loss is the
MSE between the student's FSP matrices of consecutive mapped layers and the
teacher's of the layers they map to, computed from ``[T, T]`` token Gram matrices
(:func:`fsp_distance`) rather than by building the ``[H, H]`` matrices. The chain starts at the embedding output
(layer 0 ↔ 0), so a 1-layer student still has one pair; student states are first
projected to the teacher's width when widths differ.
"""

from __future__ import annotations

import torch

from kdray.knowledge.base import (
    Knowledge,
    KnowledgeContext,
    ModelOutputs,
    Needs,
    projection,
    register_knowledge,
)


def fsp_matrix(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, Ha, Hb]`` FSP matrices of ``a`` ``[B, T, Ha]`` and ``b`` ``[B, T, Hb]``, normalised by real length."""
    mask = attention_mask[:, : a.shape[1]].to(torch.float32).unsqueeze(-1)
    gram = torch.einsum("bti,btj->bij", a.float() * mask, b.float() * mask)
    return gram / mask.sum(dim=1, keepdim=True).clamp_min(1.0)


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
        chain = self.chain
        mask = batch["attention_mask"][:, : student.hidden[chain[0][0]].shape[1]].to(torch.float32).unsqueeze(-1)
        # Each layer is projected, masked and turned into token Gram matrices once, though it sits in two pairs.
        s_states = {s: self.proj(student.hidden[s]).float() * mask for s, _ in chain}
        t_states = {t: teacher.hidden[t].float() * mask for _, t in chain}
        s_gram = {s: x @ x.transpose(1, 2) for s, x in s_states.items()}
        t_gram = {t: x @ x.transpose(1, 2) for t, x in t_states.items()}
        cross = {(s, t): s_states[s] @ t_states[t].transpose(1, 2) for s, t in chain}
        n2 = mask.sum(dim=(1, 2)).clamp_min(1.0).pow(2)
        width = next(iter(t_states.values())).shape[-1]
        losses = []
        for (s_a, t_a), (s_b, t_b) in zip(chain[:-1], chain[1:]):
            losses.append(fsp_distance(s_gram[s_a], s_gram[s_b], t_gram[t_a], t_gram[t_b],
                                       cross[(s_a, t_a)], cross[(s_b, t_b)], n2) / (width * width))
        return torch.stack(losses).mean()


def fsp_distance(s_a: torch.Tensor, s_b: torch.Tensor, t_a: torch.Tensor, t_b: torch.Tensor, x_a: torch.Tensor,
                 x_b: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``||G_s - G_t||²`` (squared Frobenius) from ``[B, T, T]`` token Gram matrices.

    With masked states A, B (``[T, H]``) and ``G = AᵀB / n``: ``||G_s - G_t||² = (<A_sA_sᵀ, B_sB_sᵀ> +
    <A_tA_tᵀ, B_tB_tᵀ> - 2 <A_sA_tᵀ, B_sB_tᵀ>) / n²``, where <., .> sums the elementwise product. For
    T < H this needs ``[T, T]`` instead of ``[H, H]`` matrices: fewer FLOPs and far fewer bytes (at T=128,
    H=384 a ninth of the memory per example), and the value is the same as building the FSP matrices.

    Args: ``s_a``/``s_b`` student self-Grams of the pair's two layers, ``t_a``/``t_b`` the teacher's, ``x_a``/
    ``x_b`` student-teacher cross Grams, ``n2`` the squared real lengths ``[B]``.
    """
    def inner(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u.double() * v.double()).sum(dim=(1, 2))

    sq = (inner(s_a, s_b) + inner(t_a, t_b) - 2.0 * inner(x_a, x_b)) / n2.double()
    return sq.clamp_min(0.0).mean().float()
