"""The actor-critic selector's networks: state encoder, actor, critic.

Kept apart from the agent logic so the shapes (what goes in, what comes out)
can be read in one place. All three are plain ``nn.Module``s; the agent owns
the optimisers and the target copies.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class StateEncoder(nn.Module):
    """Teacher and student [CLS] summaries, each through its own 2-layer MLP, then concatenated.

    The batch-mean [CLS] vectors are layer-normalised (no affine) before the MLPs:
    teachers and students differ wildly in activation scale, and a scale-free input
    is what lets an encoder trained on one task be reused on another (``init_from``).
    Extra features (per-kind losses, progress) are appended unchanged.
    """

    def __init__(self, teacher_width: int, student_width: int, extra_width: int, hidden: int) -> None:
        super().__init__()
        self.teacher_width = teacher_width
        self.student_width = student_width
        self.extra_width = extra_width
        self.teacher = mlp([teacher_width, hidden, hidden])
        self.student = mlp([student_width, hidden, hidden])
        self.out_width = 2 * hidden + extra_width

    def forward(self, teacher: torch.Tensor, student: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        t = self.teacher(F.layer_norm(teacher, (self.teacher_width,)))
        s = self.student(F.layer_norm(student, (self.student_width,)))
        return torch.cat([t, s, extra], dim=-1)


class Actor(nn.Module):
    """Deterministic policy mu(s): 3-layer MLP giving one pre-sigmoid score per kind."""

    def __init__(self, state_width: int, num_kinds: int, hidden: int) -> None:
        super().__init__()
        self.net = mlp([state_width, hidden, hidden, num_kinds])
        # Start near weight 0.5 for every kind: no kind is favoured before any reward is seen.
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.uniform_(last.weight, -3e-3, 3e-3)
        nn.init.zeros_(last.bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """Soft action in (0, 1) per kind."""
        return torch.sigmoid(self.net(state))

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid scores (what the saturation penalty keeps in range)."""
        return self.net(state)


class Critic(nn.Module):
    """Q(s, a): 3-layer MLP on the concatenated state and action."""

    def __init__(self, state_width: int, num_kinds: int, hidden: int) -> None:
        super().__init__()
        self.net = mlp([state_width + num_kinds, hidden, hidden, 1])

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], dim=-1)).squeeze(-1)


@torch.no_grad()
def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.mul_(1.0 - tau).add_(s, alpha=tau)
