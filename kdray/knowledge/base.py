"""Shared pieces of the knowledge pool: named outputs, what each kind needs, the registry.

Every kind is a small ``nn.Module`` that turns the *named* outputs of one batch
(:class:`ModelOutputs`, the same for a live teacher and a cached one) into one
scalar loss. Kinds also declare what they need (:class:`Needs`), so the loop
asks the models for hidden states / attentions only when a selected kind uses
them, and skips the teacher forward entirely when no selected kind needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from kdray.models import LayerMapMode, layer_map
from kdray.registry import KNOWLEDGE_KINDS, require_declared
from kdray.top_layer import cls_top_forward, prunable


@dataclass
class ModelOutputs:
    """The outputs of one model on one batch, keyed by layer number.

    Attributes:
        logits: ``[B, C]`` (``[B, 1]`` for regression).
        hidden: layer number -> ``[B, T, H]``; 0 is the embedding output, i the i-th encoder layer
            (HF ``hidden_states`` indices). Only the layers somebody asked for are present.
        attentions: encoder layer number (1-based) -> post-softmax ``[B, heads, T, T]``.
        fsp_sq: (layer a, layer b) -> ``[B]`` fp32 ``‖h_aᵀ h_b‖²`` per example over its real tokens, not
            normalised: the relation loss's teacher-only term, which the teacher-output cache stores for
            consecutive cached layers so a cached step need not recompute it. Empty for a live forward.
    """

    logits: torch.Tensor
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)
    fsp_sq: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Needs:
    """What a kind needs from the two forwards of a step."""

    teacher: bool = False
    student_hidden: frozenset[int] = frozenset()
    teacher_hidden: frozenset[int] = frozenset()
    student_attentions: frozenset[int] = frozenset()
    teacher_attentions: frozenset[int] = frozenset()

    def __or__(self, other: "Needs") -> "Needs":
        return Needs(
            teacher=self.teacher or other.teacher,
            student_hidden=self.student_hidden | other.student_hidden,
            teacher_hidden=self.teacher_hidden | other.teacher_hidden,
            student_attentions=self.student_attentions | other.student_attentions,
            teacher_attentions=self.teacher_attentions | other.teacher_attentions,
        )


@dataclass(frozen=True)
class KnowledgeContext:
    """Everything a kind needs to know about the pair of models, fixed for a run.

    Attributes:
        layer_map: (student_layer, teacher_layer) pairs, 1-based encoder layers (``kdray.models.layer_map``).
        student_width / teacher_width: hidden sizes; a learned projection bridges them when they differ.
        student_heads / teacher_heads: attention heads (attention averages heads when they differ).
        temperature: softmax temperature of ``response``.
        is_regression: STS-B: MSE on logits / labels instead of KL / CE.
        feature_mode: ``full`` (TinyBERT-style MSE over all tokens), ``cls_normalized`` (distance of
            L2-normalised [CLS] vectors, every mapped layer) or ``pkd`` (PKD's patient loss, top student
            layer excluded); the ``pkd`` selector sets the last.
    """

    layer_map: tuple[tuple[int, int], ...]
    student_width: int
    teacher_width: int
    student_heads: int = 1
    teacher_heads: int = 1
    temperature: float = 4.0
    is_regression: bool = False
    feature_mode: str = "full"

    @classmethod
    def between(cls, student: nn.Module, teacher: nn.Module, layer_map_mode: LayerMapMode = "skip",
                temperature: float = 4.0, feature_mode: str = "full",
                is_regression: bool = False) -> "KnowledgeContext":
        """The context of two transformers models: widths, heads and the layer map read off their configs."""
        s, t = student.config, teacher.config  # type: ignore[union-attr]
        pairs = layer_map(s.num_hidden_layers, t.num_hidden_layers, layer_map_mode)
        return cls(layer_map=tuple((int(a), int(b)) for a, b in pairs), student_width=s.hidden_size,
                   teacher_width=t.hidden_size, student_heads=s.num_attention_heads,
                   teacher_heads=t.num_attention_heads, temperature=temperature, is_regression=is_regression,
                   feature_mode=feature_mode)


class Knowledge(nn.Module):
    """One kind of knowledge: a loss between student and teacher outputs of one batch."""

    name: str = ""

    def __init__(self, ctx: KnowledgeContext) -> None:
        super().__init__()
        self.ctx = ctx

    def needs(self) -> Needs:
        """The outputs this kind reads; the loop requests exactly the union over selected kinds."""
        return Needs(teacher=True)

    def forward(
        self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


#: kind name -> implementation; filled when ``kdray.knowledge`` imports its modules (names from kdray.registry)
KNOWLEDGE: dict[str, type[Knowledge]] = {}


def register_knowledge(name: str) -> Callable[[type[Knowledge]], type[Knowledge]]:
    """Class decorator: implement the kind ``name``, which :data:`kdray.registry.KNOWLEDGE_KINDS` must declare."""
    require_declared(name, KNOWLEDGE_KINDS, "knowledge kind")

    def wrap(cls: type[Knowledge]) -> type[Knowledge]:
        if name in KNOWLEDGE:
            raise ValueError(f"knowledge kind {name!r} registered twice")
        cls.name = name
        KNOWLEDGE[name] = cls
        return cls

    return wrap


def build_knowledge(pool: list[str], ctx: KnowledgeContext) -> nn.ModuleDict:
    """One module per kind in ``pool``; their projections train with the student."""
    unknown = [k for k in pool if k not in KNOWLEDGE]
    if unknown:
        raise ValueError(f"unknown knowledge kinds {unknown}; known: {', '.join(sorted(KNOWLEDGE))}")
    return nn.ModuleDict({k: KNOWLEDGE[k](ctx) for k in pool})


def needs_of(modules: nn.ModuleDict, weights: dict[str, float]) -> Needs:
    """Union of the needs of the kinds with a non-zero weight (zero-weight kinds are not computed)."""
    total = Needs()
    for name, module in modules.items():
        if weights.get(name, 0.0) > 0:
            total = total | module.needs()
    return total


def projection(src: int, dst: int) -> nn.Module:
    """A learned linear map between widths, or identity when they match (no extra parameters)."""
    return nn.Identity() if src == dst else nn.Linear(src, dst)


def token_mask(batch: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``[B, T, 1]`` float mask of real tokens, in ``like``'s dtype."""
    return batch["attention_mask"][:, : like.shape[1]].to(like.dtype).unsqueeze(-1)


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens only (``mask`` is ``[B, T, 1]``), averaged over features."""
    sq = (a.float() - b.float()).pow(2) * mask.float()
    return sq.sum() / (mask.float().sum() * a.shape[-1]).clamp_min(1.0)


def run_model(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    hidden: frozenset[int] | set[int] = frozenset(),
    attentions: frozenset[int] | set[int] = frozenset(),
    cls_top: bool = True,
) -> ModelOutputs:
    """Forward an HF sequence classifier, asking for hidden states / attentions only when needed.

    When nothing reads the top layer beyond its [CLS] row (no top-layer hidden state, no attention map),
    ``cls_top`` computes that row only (:mod:`kdray.top_layer`: same logits, less work); ``False`` runs
    the model's full forward (the bench's reference step).
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    if cls_top and prunable(model, hidden, attentions):
        logits, kept = cls_top_forward(model, inputs, hidden)
        return ModelOutputs(logits=logits, hidden=kept)
    out = model(**inputs, output_hidden_states=bool(hidden), output_attentions=bool(attentions))
    return ModelOutputs(
        logits=out.logits,
        hidden={layer: out.hidden_states[layer] for layer in sorted(hidden)},
        attentions={layer: out.attentions[layer - 1] for layer in sorted(attentions)},
    )
