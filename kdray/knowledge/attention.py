"""``attention`` (extra kind): match mapped attention probabilities (TinyBERT).

HF returns post-softmax probabilities, so this is MSE between probabilities,
over (query, key) pairs that are both real tokens. When head counts differ the
heads are averaged first. With ``train.teacher_cache`` the teacher's maps come from
the cache when they fit in ``train.teacher_cache_attention_gib`` (each row's ``heads x n x n``
over its n real tokens); otherwise this kind runs a live teacher forward.
"""

from __future__ import annotations

import torch

from kdray.knowledge.base import Knowledge, ModelOutputs, Needs, register_knowledge


@register_knowledge("attention")
class AttentionKnowledge(Knowledge):
    """Masked MSE between student and teacher attention maps of mapped layers."""

    def needs(self) -> Needs:
        pairs = self.ctx.layer_map
        return Needs(
            teacher=True,
            student_attentions=frozenset(s for s, _ in pairs),
            teacher_attentions=frozenset(t for _, t in pairs),
        )

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        assert teacher is not None, "attention needs teacher outputs"
        losses = []
        for s_layer, t_layer in self.ctx.layer_map:
            a_s, a_t = student.attentions[s_layer].float(), teacher.attentions[t_layer].float()
            if a_s.shape[1] != a_t.shape[1]:
                a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
            tokens = batch["attention_mask"][:, : a_s.shape[-1]].float()
            pair = (tokens[:, :, None] * tokens[:, None, :]).unsqueeze(1)  # [B, 1, T, T]
            sq = (a_s - a_t).pow(2) * pair
            losses.append(sq.sum() / (pair.sum() * a_s.shape[1]).clamp_min(1.0))
        return torch.stack(losses).mean()
