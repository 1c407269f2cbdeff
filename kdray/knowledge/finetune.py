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


def brier_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The multi-class Brier score, sum_c (p_c - y_c)^2 per row, in [0, 2]: a bounded proper score. Unlike
    cross-entropy it does not grow without bound when a confident prediction is wrong, so an overconfident
    student late in training is not scored as getting worse while its accuracy holds (issue #15)."""
    probs = logits.float().softmax(-1)
    per_row = ((probs - F.one_hot(labels.long(), probs.shape[-1]).float()) ** 2).sum(-1)
    return {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]


def reward_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool, score: str = "ce",
                reduction: str = "mean") -> torch.Tensor:
    """What the reward set is scored with (``selector.reward.score``): ``ce``, the task loss; ``brier``, the
    Brier score on classification tasks (on regression tasks both are the task's squared error)."""
    if score not in ("ce", "brier"):
        raise ValueError(f"selector.reward.score={score!r} unknown; allowed: ce, brier")
    if score == "brier" and not is_regression:
        return brier_loss(logits, labels, reduction)
    return task_loss(logits, labels, is_regression, reduction)
