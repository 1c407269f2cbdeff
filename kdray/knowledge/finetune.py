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


#: ``selector.reward.score`` values: what the reward set can be scored with
REWARD_SCORES = ("ce", "brier", "pearson")


def pearson_loss(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - Pearson's r of the predictions with the labels, in [0, 2] (1 where either is constant).

    STS-B's own metric, as a loss. Unlike the squared error it ignores the regression head's offset and
    scale: a phase that moves every prediction by 0.2 changes the squared error by about 0.04 and r not at
    all, so the reward sees the ranking the task scores, not the head's calibration (issue #15)."""
    x = predictions.double().reshape(-1)
    y = labels.double().reshape(-1)
    x, y = x - x.mean(), y - y.mean()
    denominator = (x.square().sum() * y.square().sum()).sqrt()
    r = (x * y).sum() / denominator if denominator > 0 else x.new_zeros(())
    return (1.0 - r).float()


def reward_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool, score: str = "ce",
                reduction: str = "mean") -> torch.Tensor:
    """What the reward set is scored with (``selector.reward.score``): ``ce``, the task loss; ``brier``, the
    Brier score on classification tasks (on regression tasks both are the task's squared error);
    ``pearson``, 1 - Pearson's r over the rows given, on regression tasks (a set-level score: no per-row value)."""
    if score not in REWARD_SCORES:
        raise ValueError(f"selector.reward.score={score!r} unknown; allowed: {', '.join(REWARD_SCORES)}")
    if score == "pearson":
        if not is_regression:
            raise ValueError("selector.reward.score=pearson scores regression tasks only (STS-B); "
                             "classification tasks use ce or brier")
        if reduction != "mean":
            raise ValueError("selector.reward.score=pearson is a set-level score: it has no per-row value")
        return pearson_loss(logits.squeeze(-1), labels)
    if score == "brier" and not is_regression:
        return brier_loss(logits, labels, reduction)
    return task_loss(logits, labels, is_regression, reduction)
