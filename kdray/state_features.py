"""The scalar measurements a bandit selector's state uses (:class:`kdray.selection.bandit.BanditState`).

Issue #15 found the [CLS] state nearly constant across batches, so the bandit decides on a few
standardised scalars the loop measures at each decision instead: the learning rate's share of its peak,
the reward-set (holdout) loss and its change over the phase that just ended, and, only when
``selector.bandit.features`` asks for them, each kind's gradient norm and the kinds' pairwise gradient
cosines on the phase's first batch (one train-mode forward under a forked RNG, one backward per kind:
:func:`kdray.step.kind_gradients`). Every state the bandit sees is thus from one forward mode: the
training forwards' train mode (the holdout loss is an evaluation, in eval mode, as always).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kdray.run_setup import RunSetup
from kdray.selection.bandit import (
    HOLDOUT_CE,
    HOLDOUT_DELTA,
    LR,
    cosine_key,
    grad_norm_key,
)
from kdray.state import TrainingState
from kdray.step import TeacherFn, kind_gradients


def bandit_features(setup: RunSetup, state: TrainingState, groups: list[str], batch: dict[str, torch.Tensor],
                    rows: list[int]) -> dict[str, float]:
    """``BanditState.features`` at a decision on ``batch`` (the phase's first), for the feature ``groups``."""
    return measured_features(
        groups, list(state.selector.pool), float(state.scheduler.get_last_lr()[0]) / setup.config.train.lr,
        float(state.phase.reward), float(state.phase.reward_delta), setup.models.student, state.knowledge, batch,
        rows, setup.teacher_fn, setup.autocast)


def measured_features(groups: list[str], pool: list[str], lr_share: float, holdout: float, holdout_delta: float,
                      student: nn.Module, knowledge: nn.ModuleDict, batch: dict[str, torch.Tensor], rows: list[int],
                      teacher_fn: TeacherFn, autocast: Callable[[], contextlib.AbstractContextManager[Any]]
                      ) -> dict[str, float]:
    """The features from their measurements (the loop's, or ``kdray bench``'s on its own models and batches)."""
    features = {LR: lr_share, HOLDOUT_CE: holdout, HOLDOUT_DELTA: holdout_delta}
    if "grad_norms" in groups or "cosines" in groups:
        norms, cosines = kind_gradients(student, knowledge, pool, batch, rows, teacher_fn, autocast,
                                        cosines="cosines" in groups)
        features.update({grad_norm_key(k): v for k, v in norms.items()})
        features.update({cosine_key(a, b): v for (a, b), v in cosines.items()})
    return features
