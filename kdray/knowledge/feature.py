"""``feature`` (FeaK): match mapped intermediate hidden states.

Two modes (``KnowledgeContext.feature_mode``):
- ``full``: MSE over every real token between the projected student state and the
  teacher state of the mapped layer (TinyBERT's hidden-state loss), averaged over mapped layers;
- ``cls_normalized``: squared distance between the L2-normalised [CLS] vectors of every mapped
  layer, summed over the width, averaged over layers and the batch (what ``pkd`` used before issue #15);
- ``pkd``: PKD's patient loss as its reference code computes it (Sun et al. 2019; MetaDistil's copy):
  MSE of the L2-normalised [CLS] vectors, averaged over the width too (the scale its beta = 100 is
  tuned for), over every mapped layer except the student's top one, whose output the prediction
  loss already covers. The ``pkd`` selector switches the run to this mode.
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

FEATURE_MODES = ("full", "cls_normalized", "pkd")


def patient_pairs(layer_map: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """PKD's patient layers: the mapped pairs without the student's top layer (the highest one mapped)."""
    top = max(s for s, _ in layer_map)
    pairs = tuple((s, t) for s, t in layer_map if s != top)
    if not pairs:
        raise ValueError(
            f"feature_mode=pkd excludes the student's top layer {top} (the prediction loss covers it), and the "
            f"layer map {list(layer_map)} has no other layer; use a student with 2+ layers or feature_mode=cls_normalized"
        )
    return pairs


@register_knowledge("feature")
class FeatureKnowledge(Knowledge):
    """Hidden-state distillation through a learned projection when widths differ."""

    def __init__(self, ctx: KnowledgeContext) -> None:
        super().__init__(ctx)
        if ctx.feature_mode not in FEATURE_MODES:
            raise ValueError(f"unknown feature_mode {ctx.feature_mode!r}; known: {', '.join(FEATURE_MODES)}")
        self.pairs = patient_pairs(ctx.layer_map) if ctx.feature_mode == "pkd" else tuple(ctx.layer_map)
        # One shared projection: the student's layers live in one space, as in TinyBERT.
        self.proj = projection(ctx.student_width, ctx.teacher_width)

    def needs(self) -> Needs:
        pairs = self.pairs
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
        for s_layer, t_layer in self.pairs:
            hs = self.proj(student.hidden[s_layer])
            ht = teacher.hidden[t_layer]
            if self.ctx.feature_mode == "pkd":
                losses.append(F.mse_loss(F.normalize(hs[:, 0].float(), dim=-1), F.normalize(ht[:, 0].float(), dim=-1)))
            elif self.ctx.feature_mode == "cls_normalized":
                diff = F.normalize(hs[:, 0].float(), dim=-1) - F.normalize(ht[:, 0].float(), dim=-1)
                losses.append(diff.pow(2).sum(-1).mean())
            else:
                losses.append(masked_mse(hs, ht, token_mask(batch, hs)))
        return torch.stack(losses).mean()
