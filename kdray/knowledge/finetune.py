"""``finetune`` (the paper's FinK): the task loss against gold labels; needs no teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdray.knowledge.base import Knowledge, ModelOutputs, Needs, register_knowledge


@register_knowledge("finetune")
class FinetuneKnowledge(Knowledge):
    """Cross-entropy with the gold labels (MSE for STS-B regression)."""

    def needs(self) -> Needs:
        return Needs(teacher=False)

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return task_loss(student.logits, batch["labels"], self.ctx.is_regression)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool, reduction: str = "mean") -> torch.Tensor:
    """The task's own loss; also what the reward set is scored with (``reduction="none"``: one per row)."""
    if is_regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), labels.long(), reduction=reduction)
