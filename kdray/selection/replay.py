"""A small ring buffer of phase transitions for the actor-critic selector.

Transitions hold the raw state inputs (batch-mean [CLS] vectors and extra
features), not encoded states, because the encoders keep training with the
critic; and the raw reward components (loss drop, exploration bonus, cost), not
a shaped reward, because the reward's statistics keep moving: the agent composes
the reward at sampling time (``kdray.selection.reward.compose``). Everything is a
preallocated tensor, so ``state_dict`` is tensors and ints only and loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_FIELDS = ("teacher", "student", "extra", "action", "drop", "exploration", "cost",
           "next_teacher", "next_student", "next_extra", "done")


@dataclass
class Batch:
    """A sampled minibatch; field names mirror the stored transition."""

    teacher: torch.Tensor
    student: torch.Tensor
    extra: torch.Tensor
    action: torch.Tensor  # the executed action (binary in hard mode): what the critic is trained on
    drop: torch.Tensor  # the phase's reward-set loss drop (scaled to a full phase)
    exploration: torch.Tensor  # unweighted exploration bonus; NaN where there was none
    cost: torch.Tensor  # cost penalty (already times RewardConfig.cost)
    next_teacher: torch.Tensor
    next_student: torch.Tensor
    next_extra: torch.Tensor
    done: torch.Tensor


class ReplayBuffer:
    """Fixed-capacity FIFO of transitions; sampling uses the caller's generator (reproducible)."""

    def __init__(self, capacity: int, teacher_width: int, student_width: int, extra_width: int, num_kinds: int) -> None:
        self.capacity = capacity
        widths = {
            "teacher": teacher_width, "student": student_width, "extra": extra_width,
            "action": num_kinds, "drop": 0, "exploration": 0, "cost": 0,
            "next_teacher": teacher_width, "next_student": student_width, "next_extra": extra_width, "done": 0,
        }
        self.data = {
            name: torch.zeros((capacity, w) if w else (capacity,), dtype=torch.float32) for name, w in widths.items()
        }
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **transition: torch.Tensor | float) -> None:
        """Store one transition (keyword per field), overwriting the oldest when full."""
        missing = set(_FIELDS) - set(transition)
        if missing:
            raise ValueError(f"transition is missing {sorted(missing)}")
        for name in _FIELDS:
            self.data[name][self.pos] = torch.as_tensor(transition[name], dtype=torch.float32)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Uniform sample without replacement (all of it when smaller than ``batch_size``)."""
        n = min(batch_size, self.size)
        idx = torch.randperm(self.size, generator=generator)[:n]
        return Batch(**{name: self.data[name][idx] for name in _FIELDS})

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "pos": self.pos, **{name: t.clone() for name, t in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "reward" in state and "drop" not in state:
            raise ValueError("this replay buffer was saved by an earlier kdray that stored normalised rewards; "
                             "restart the run (selector.init_from still reuses its networks)")
        for name in _FIELDS:
            if state[name].shape != self.data[name].shape:
                raise ValueError(
                    f"replay field {name!r} has shape {tuple(state[name].shape)}, expected {tuple(self.data[name].shape)}"
                )
            self.data[name] = state[name].clone().float()
        self.size = int(state["size"])
        self.pos = int(state["pos"])
