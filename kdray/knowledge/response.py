"""``response`` (ResK): match the teacher's soft labels (Hinton et al. 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdray.knowledge.base import Knowledge, ModelOutputs, Needs, register_knowledge


@register_knowledge("response")
class ResponseKnowledge(Knowledge):
    """KL(teacher soft ‖ student soft) at temperature T times T² (keeps gradients T-independent); MSE on logits for regression."""

    def needs(self) -> Needs:
        return Needs(teacher=True)

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        assert teacher is not None, "response needs teacher outputs"
        s, t = student.logits.float(), teacher.logits.float()
        if self.ctx.is_regression:
            return F.mse_loss(s, t)
        temp = self.ctx.temperature
        log_p_s = F.log_softmax(s / temp, dim=-1)
        log_p_t = F.log_softmax(t / temp, dim=-1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temp**2
