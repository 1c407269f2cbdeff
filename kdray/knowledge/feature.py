"""``feature`` (FeaK): match mapped intermediate hidden states.

Two modes (``KnowledgeContext.feature_mode``):
- ``full``: MSE over every real token between the projected student state and the
  teacher state of the mapped layer (TinyBERT's hidden-state loss), averaged over mapped layers;
- ``cls_normalized``: PKD's patient loss (Sun et al. 2019): squared distance between the
  L2-normalised [CLS] vectors of mapped layers, averaged over layers and the batch.
  The ``pkd`` selector switches the run to this mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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

FEATURE_MODES = ("full", "cls_normalized")


@register_knowledge("feature")
class FeatureKnowledge(Knowledge):
    """Hidden-state distillation through a learned projection when widths differ."""

    def __init__(self, ctx: KnowledgeContext) -> None:
        super().__init__(ctx)
        if ctx.feature_mode not in FEATURE_MODES:
            raise ValueError(f"unknown feature_mode {ctx.feature_mode!r}; known: {', '.join(FEATURE_MODES)}")
        # One shared projection: the student's layers live in one space, as in TinyBERT.
        self.proj = projection(ctx.student_width, ctx.teacher_width)

    def needs(self) -> Needs:
        pairs = self.ctx.layer_map
        return Needs(
            teacher=True,
            student_hidden=frozenset(s for s, _ in pairs),
            teacher_hidden=frozenset(t for _, t in pairs),
        )

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        assert teacher is not None, "feature needs teacher outputs"
        losses = []
        for s_layer, t_layer in self.ctx.layer_map:
            hs = self.proj(student.hidden[s_layer])
            ht = teacher.hidden[t_layer]
            if self.ctx.feature_mode == "cls_normalized":
                diff = F.normalize(hs[:, 0].float(), dim=-1) - F.normalize(ht[:, 0].float(), dim=-1)
                losses.append(diff.pow(2).sum(-1).mean())
            else:
                losses.append(masked_mse(hs, ht, token_mask(batch, hs)))
        return torch.stack(losses).mean()
