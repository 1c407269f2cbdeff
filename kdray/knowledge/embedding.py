"""``embedding`` (extra kind): match the embedding-layer outputs (``hidden_states[0]``), as in TinyBERT."""

from __future__ import annotations

import torch

from kdray.knowledge.base import (
    Knowledge,
    KnowledgeContext,
    ModelOutputs,
    Needs,
    masked_mse,
    projection,
    register_knowledge,
    token_mask,
)


@register_knowledge("embedding")
class EmbeddingKnowledge(Knowledge):
    """MSE over real tokens between projected student and teacher embedding outputs."""

    def __init__(self, ctx: KnowledgeContext) -> None:
        super().__init__(ctx)
        self.proj = projection(ctx.student_width, ctx.teacher_width)

    def needs(self) -> Needs:
        return Needs(teacher=True, student_hidden=frozenset({0}), teacher_hidden=frozenset({0}))

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        assert teacher is not None, "embedding needs teacher outputs"
        hs = self.proj(student.hidden[0])
        return masked_mse(hs, teacher.hidden[0], token_mask(batch, hs))
