"""Measured relative compute of each knowledge kind, for the actor-critic's compute-aware reward.

``selector.reward.cost`` subtracts ``cost * sum_k a_k c_k / sum_k c_k`` from the reward
(:func:`kdray.selection.reward.cost_penalty`). Until stop 22 every ``c_k`` was 1.0 and nothing measured
them, so the "compute-aware" term was a plain L1 penalty on the weights (issue #15). Now, when the penalty
is on, the loop measures ``c_k`` once before its first step, on the run's own first batch, with the run's
own pieces: each kind alone runs the student's forward, the teacher's outputs it needs (from the
teacher-output cache when the run has one, else a live forward) and the backward of its loss. ``c_k`` is
what kind k adds to a plain fine-tuning step (``finetune`` alone; the cheapest kind when the pool has no
``finetune``), in units of that step, floored at :data:`FLOOR` so a weight on any kind still counts.
A kind cheaper alone than fine-tuning (``embedding``'s backward stops at the embeddings) or served by the
cache (``response`` from cached logits) adds about nothing to a step that fine-tunes anyway: ``FLOOR``.

Measured on MRPC (glue_study's MiniLM teacher and 3-layer student, batch 32, one thread, two runs on a shared
2-core box): with a live fp32 teacher response 0.60-0.62, feature 0.44-1.27, relation 0.47-1.17, attention
0.22-0.78, embedding 0.01-0.14 plain steps; from the fp32 teacher-output cache every kind at the floor.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from kdray.step import TeacherFn, no_autocast, probe_losses

FLOOR = 0.01  # the least relative cost of a kind: a kind the cheapest one's step already pays for is not free
REPEATS = 3  # timed passes per kind, in alternating order; the median resists one slow (first, allocating) pass


def kind_seconds(
    student: nn.Module,
    knowledge: nn.ModuleDict,
    kinds: Sequence[str],
    batch: dict[str, torch.Tensor],
    rows: Sequence[int],
    teacher_fn: TeacherFn,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = no_autocast,
    repeats: int = REPEATS,
) -> dict[str, float]:
    """Median seconds of one forward and backward with each kind alone (no parameter's ``.grad`` touched, the
    training RNG stream left as it was)."""
    params = [p for p in student.parameters() if p.requires_grad]
    device = params[0].device
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(repeats):
        for kind in (kinds if r % 2 == 0 else list(reversed(kinds))):
            start = time.perf_counter()
            loss = probe_losses(student, knowledge, [kind], batch, rows, teacher_fn, autocast)[kind]
            torch.autograd.grad(loss, params, allow_unused=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[kind].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def relative_costs(seconds: dict[str, float], world: int = 1) -> dict[str, float]:
    """``c_k = max((t_k - t_base) / t_base, FLOOR)``, the base being ``finetune`` when it is in the pool (a plain
    fine-tuning step), else the cheapest kind. With several DDP workers every rank takes rank 0's costs (as it
    takes rank 0's decisions), so all ranks' selectors are rewarded alike."""
    base = seconds["finetune"] if "finetune" in seconds else min(seconds.values())
    costs = {k: max((t - base) / max(base, 1e-12), FLOOR) for k, t in seconds.items()}
    if world > 1:
        box = [costs]
        torch_dist.broadcast_object_list(box, src=0)
        costs = dict(box[0])
    return costs
