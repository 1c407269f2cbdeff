"""Baseline selectors: the paper's comparison rows, all driven through the same loop.

Weight conventions (documented choices, not tuned):
- every static baseline uses weight 1 per selected kind: each loss keeps its own scale,
  so ``all`` over ``[finetune, response]`` is exactly ``vanilla_kd``; dividing by |pool|
  would instead shrink the task loss as the pool grows and confound pool ablations;
- ``finetune``, ``vanilla_kd`` and ``pkd`` are defined by their own kind sets, not by
  ``knowledge.pool``: their ``pool`` attribute is that set (the loop builds the kinds of
  ``selector.pool``, and the run record reports it), so a sweep over pools does not change them;
- ``pkd`` is PKD (Sun et al. 2019) as its reference code runs it: ``feature`` becomes the patient loss
  (``feature_mode = "pkd"``, read by the loop when it builds the knowledge modules: MSE of normalised
  [CLS] vectors, the student's top layer excluded since ``response`` covers its output) with weight
  ``selector.pkd_beta`` (beta, default 100 as in the reference code; PKD searched {10, 100, 500, 1000});
  ``finetune`` and ``response`` keep weight 1;
- ``random_hard`` selects each kind of the pool with probability 1/2 every phase, and
  ``finetune`` (or the first kind of the pool without it) when nothing is selected;
  ``random_soft`` draws each weight uniformly from [0, 1]. Both use the selector's seeded
  generator, so a run is reproducible and resumable.
"""

from __future__ import annotations

import torch

from kdray.config import SelectorConfig
from kdray.selection.base import PhaseState, Selector, fallback_kind, register_selector


class StaticSelector(Selector):
    """Same weights every phase; subclasses set ``kinds`` (or use the configured pool)."""

    kinds: tuple[str, ...] | None = None
    #: how the ``feature`` kind computes its loss for this method (None: knowledge config decides)
    feature_mode: str | None = None

    def __init__(self, pool: list[str], config: SelectorConfig, seed: int = 0) -> None:
        super().__init__(list(self.kinds) if self.kinds is not None else pool, config, seed)

    def weights(self) -> dict[str, float]:
        return {k: 1.0 for k in self.pool}

    def decide(self, state: PhaseState) -> dict[str, float]:
        self.last_weights = self.weights()
        return dict(self.last_weights)


@register_selector("finetune")
class FinetuneSelector(StaticSelector):
    """Plain fine-tuning of the student: the task loss only, no teacher."""

    kinds = ("finetune",)


@register_selector("vanilla_kd")
class VanillaKDSelector(StaticSelector):
    """Hinton-style KD: task loss + soft labels."""

    kinds = ("finetune", "response")


@register_selector("pkd")
class PKDSelector(StaticSelector):
    """Patient KD (Sun et al. 2019): task loss + soft labels + beta * the patient loss of the lower layers."""

    kinds = ("finetune", "response", "feature")
    feature_mode = "pkd"

    def weights(self) -> dict[str, float]:
        return {"finetune": 1.0, "response": 1.0, "feature": float(self.config.pkd_beta)}


@register_selector("all")
class AllSelector(StaticSelector):
    """Every kind of the configured pool, weight 1 each."""


@register_selector("fixed")
class FixedSelector(StaticSelector):
    """The weights given in ``selector.weights``; pool kinds not named there get 0."""

    def weights(self) -> dict[str, float]:
        return {k: float(self.config.weights.get(k, 0.0)) for k in self.pool}


@register_selector("random_hard")
class RandomHardSelector(Selector):
    """Each kind on or off with probability 1/2, redrawn every phase."""

    def decide(self, state: PhaseState) -> dict[str, float]:
        draws = torch.rand(len(self.pool), generator=self.generator) < 0.5
        weights = {k: float(on) for k, on in zip(self.pool, draws.tolist())}
        if not any(weights.values()):
            weights[fallback_kind(self.pool)] = 1.0
        self.last_weights = weights
        return dict(weights)


@register_selector("random_soft")
class RandomSoftSelector(Selector):
    """Each weight uniform in [0, 1], redrawn every phase."""

    def decide(self, state: PhaseState) -> dict[str, float]:
        draws = torch.rand(len(self.pool), generator=self.generator)
        self.last_weights = {k: float(w) for k, w in zip(self.pool, draws.tolist())}
        return dict(self.last_weights)
