"""``relation`` (RelK): match the flow between layers, as FSP matrices (Yim et al. 2017).

The FSP matrix of two layers a, b of one example is ``G = Σ_t h_a[t]ᵀ h_b[t] / n``
over its n real tokens (padding masked), a ``[H, H]`` Gram matrix. The loss is the
MSE between the student's FSP matrices of consecutive mapped layers and the
teacher's of the layers they map to. The chain starts at the embedding output
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
        mask = batch["attention_mask"]
        chain = self.chain
        losses = []
        for (s_a, t_a), (s_b, t_b) in zip(chain[:-1], chain[1:]):
            g_s = fsp_matrix(self.proj(student.hidden[s_a]), self.proj(student.hidden[s_b]), mask)
            g_t = fsp_matrix(teacher.hidden[t_a], teacher.hidden[t_b], mask)
            losses.append((g_s - g_t).pow(2).mean())
        return torch.stack(losses).mean()
