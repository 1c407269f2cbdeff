"""``knowledge.normalize``: scale each kind's loss so that a weight is the kind's share of the update.

The kinds' raw scales are far apart (MRPC, MiniLM teacher, 3-layer student: finetune's gradient is 4x
response's, 11x feature's, ~150x relation's), so a weight in [0, 1] says little about what a kind
contributes. The loop multiplies each kind's loss by a scale from :class:`LossNormalizer`:
``loss = sum_k weight_k * scale_k * loss_k``. Modes:

- ``none``: scale 1 (the behaviour before this option; the default, kept by measurement: results/normalize_study);
- ``initial-loss``: 1 / the kind's loss the first time it was computed (so its first scaled loss is 1);
- ``running-loss``: 1 / an exponential moving average of the kind's loss (momentum
  ``knowledge.normalize_momentum``), the current value included (so the first scaled loss is 1 too);
- ``gradient-norm``: 1 / the norm of the kind's gradient on the student's parameters, measured by the
  loop on a probe batch every ``knowledge.normalize_every`` steps (:func:`kind_grad_norms`), so each
  kind's gradient has norm 1 at the probe.

Scales are detached 0-dim tensors on the losses' device: reading them never syncs a GPU, and
``state_dict`` (plain floats) restores them exactly, so a resumed run continues bit-exactly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from kdray.config import KnowledgeConfig

NORMALIZE_MODES = ("none", "initial-loss", "running-loss", "gradient-norm")
_TINY = 1e-12  # a kind whose loss (or gradient) is exactly 0 contributes nothing anyway: avoid 1/0


class LossNormalizer:
    """Per-kind loss scales for one run; one instance per run, checkpointed with it."""

    def __init__(self, mode: str = "none", momentum: float = 0.9, every: int = 50) -> None:
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"knowledge.normalize={mode!r} unknown; allowed: {', '.join(NORMALIZE_MODES)}")
        self.mode = mode
        self.momentum = float(momentum)
        self.every = int(every)
        self.reference: dict[str, torch.Tensor] = {}  # initial or running loss per kind (float64)
        self.grad_norms: dict[str, float] = {}

    @classmethod
    def from_config(cls, config: KnowledgeConfig) -> "LossNormalizer":
        """The normaliser ``knowledge.normalize`` / ``normalize_momentum`` / ``normalize_every`` ask for."""
        return cls(config.normalize, config.normalize_momentum, config.normalize_every)

    def needs_grad_norms(self, step: int, kinds: Sequence[str]) -> bool:
        """gradient-norm only: probe at this step (every ``every`` steps, and when a computed kind has no norm yet)."""
        if self.mode != "gradient-norm":
            return False
        return step % self.every == 0 or any(k not in self.grad_norms for k in kinds)

    def observe_grad_norms(self, norms: Mapping[str, float]) -> None:
        """Record the per-kind gradient norms the loop measured on its probe batch."""
        self.grad_norms.update({k: float(v) for k, v in norms.items()})

    def scales(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The scale of each computed kind's loss at this step (updates the running statistics)."""
        out: dict[str, torch.Tensor] = {}
        for kind, loss in losses.items():
            value = loss.detach().to(torch.float64)
            if self.mode == "none":
                scale = torch.ones((), dtype=torch.float64, device=value.device)
            elif self.mode == "gradient-norm":
                norm = self.grad_norms.get(kind)
                scale = torch.tensor(1.0 if norm is None else 1.0 / max(norm, _TINY), dtype=torch.float64,
                                     device=value.device)
            else:
                ref = self.reference.get(kind)
                if ref is None:
                    ref = value.clone()
                elif self.mode == "running-loss":
                    ref = self.momentum * ref.to(value.device) + (1.0 - self.momentum) * value
                self.reference[kind] = ref
                scale = 1.0 / ref.abs().clamp_min(_TINY)
            out[kind] = scale.to(loss.dtype)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "reference": {k: float(v) for k, v in self.reference.items()},
                "grad_norms": dict(self.grad_norms)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint: saved with knowledge.normalize={state['mode']}, this run uses {self.mode}")
        self.reference = {k: torch.tensor(v, dtype=torch.float64) for k, v in state["reference"].items()}
        self.grad_norms = {k: float(v) for k, v in state["grad_norms"].items()}


def kind_grad_norms(losses: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor]) -> dict[str, float]:
    """The L2 norm of each kind's (unweighted) loss gradient on ``params`` (the student's), graph kept.

    One backward per kind, so the loop runs it on a probe batch every ``normalize_every`` steps only.
    """
    params = [p for p in params if p.requires_grad]
    norms: dict[str, float] = {}
    for kind, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[kind] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return norms
