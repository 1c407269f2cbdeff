"""``dynamic_kd``: a Dynamic-KD-style heuristic (Li et al., EMNLP 2021), the no-learning baseline.

Li et al. adjust the KD objectives by the student's uncertainty u in [0, 1], its prediction entropy divided
by its maximum log C: the gold-label loss keeps weight 1, prediction alignment (``response``) gets 1 - u and
representation alignment gets u, so an uncertain student leans on the teacher's intermediate states and a
confident one on its predictions (``reverse``, their "uncertainty-r", swaps the two). They weight every
instance; a kdray selector weights a phase, so u is the batch mean over the phase state's batch (the last
batch of the previous phase, from its training forward). kdray's mapping:

- ``finetune``: 1; ``response``: 1 - u; ``feature``, ``relation``, ``attention``, ``embedding``: u;
- ``signal: entropy``: u = mean normalised entropy of softmax(student_logits) (Li et al.'s signal);
  ``signal: disagreement``: u = share of rows whose student and teacher predicted classes differ;
- without the logits (the loop gives none yet, or a regression task, where entropy is undefined) u is
  ``selector.dynamic_kd.fallback`` (0.5), and the selector warns once;
- a phase where every pool kind would get 0 trains ``finetune`` (else the pool's first kind).

The loop fills ``PhaseState.student_logits`` / ``teacher_logits`` for selectors with ``needs_logits``.
"""

from __future__ import annotations

import math
import warnings

import torch

from kdray.config import SelectorConfig
from kdray.selection.base import PhaseOutcome, PhaseRecord, PhaseState, Selector, fallback_kind, register_selector

#: Li et al.'s representation alignments: weighted by the uncertainty
REPRESENTATION_KINDS = ("feature", "relation", "attention", "embedding")


def student_uncertainty(student_logits: torch.Tensor | None) -> float | None:
    """Mean prediction entropy over the batch divided by log C, in [0, 1]; None without classes."""
    if student_logits is None or student_logits.dim() != 2 or student_logits.shape[-1] < 2:
        return None
    logits = student_logits.detach().float()
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    return float(entropy.mean() / math.log(logits.shape[-1]))


def disagreement(student_logits: torch.Tensor | None, teacher_logits: torch.Tensor | None) -> float | None:
    """Share of rows where the two models predict different classes; None without both or without classes."""
    if student_logits is None or teacher_logits is None or student_logits.dim() != 2 or student_logits.shape[-1] < 2:
        return None
    differ = student_logits.detach().argmax(-1) != teacher_logits.detach().to(student_logits.device).argmax(-1)
    return float(differ.float().mean())


def dynamic_weights(pool: list[str], u: float, reverse: bool = False) -> dict[str, float]:
    """The weight of every pool kind at uncertainty ``u`` (see the module docstring)."""
    representation, prediction = (1.0 - u, u) if reverse else (u, 1.0 - u)
    weights = {}
    for kind in pool:
        if kind == "finetune":
            weights[kind] = 1.0
        elif kind == "response":
            weights[kind] = prediction
        else:
            weights[kind] = representation
    if not any(w > 0 for w in weights.values()):
        weights[fallback_kind(pool)] = 1.0
    return weights


@register_selector("dynamic_kd")
class DynamicKDSelector(Selector):
    """Weights from the student's uncertainty (or its disagreement with the teacher) on the phase's batch."""

    needs_state = True
    needs_logits = True

    def __init__(self, pool: list[str], config: SelectorConfig, seed: int = 0) -> None:
        super().__init__(pool, config, seed)
        unknown = [k for k in self.pool if k not in ("finetune", "response", *REPRESENTATION_KINDS)]
        if unknown:
            raise ValueError(f"dynamic_kd has no rule for knowledge kinds {unknown}")
        self.signal = math.nan  # the last decision's u
        self.used_fallback = False
        self._warned = False

    def uncertainty(self, state: PhaseState) -> float:
        """u for this state, or the configured fallback (with one warning) when the signal is missing."""
        cfg = self.config.dynamic_kd
        if cfg.signal == "entropy":
            u = student_uncertainty(state.student_logits)
        else:
            u = disagreement(state.student_logits, state.teacher_logits)
        self.used_fallback = u is None
        if u is None:
            if not self._warned:
                warnings.warn(f"dynamic_kd: no {cfg.signal} signal in the phase state (the loop gave no logits, or "
                              f"the task is a regression); using selector.dynamic_kd.fallback={cfg.fallback}",
                              stacklevel=2)
                self._warned = True
            return cfg.fallback
        return min(max(u, 0.0), 1.0)

    def decide(self, state: PhaseState) -> dict[str, float]:
        self.signal = self.uncertainty(state)
        self.last_weights = dynamic_weights(self.pool, self.signal, self.config.dynamic_kd.reverse)
        return dict(self.last_weights)

    def observe(self, outcome: PhaseOutcome) -> PhaseRecord:
        record = super().observe(outcome)
        record.extra.update(dynamic_kd_signal=self.signal, dynamic_kd_fallback=float(self.used_fallback))
        return record
