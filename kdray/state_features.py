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

import torch

from kdray.run_setup import RunSetup
from kdray.selection.bandit import (
    HOLDOUT_CE,
    HOLDOUT_DELTA,
    LR,
    cosine_key,
    grad_norm_key,
)
from kdray.state import TrainingState
from kdray.step import kind_gradients


def bandit_features(setup: RunSetup, state: TrainingState, groups: list[str], batch: dict[str, torch.Tensor],
                    rows: list[int]) -> dict[str, float]:
    """``BanditState.features`` at a decision on ``batch`` (the phase's first), for the feature ``groups``."""
    features = {
        LR: float(state.scheduler.get_last_lr()[0]) / setup.config.train.lr,
        HOLDOUT_CE: float(state.phase.reward),
        HOLDOUT_DELTA: float(state.phase.reward_delta),
    }
    if "grad_norms" in groups or "cosines" in groups:
        pool = list(state.selector.pool)
        norms, cosines = kind_gradients(setup.models.student, state.knowledge, pool, batch, rows, setup.teacher_fn,
                                        setup.autocast, cosines="cosines" in groups)
        features.update({grad_norm_key(k): v for k, v in norms.items()})
        features.update({cosine_key(a, b): v for (a, b), v in cosines.items()})
    return features
