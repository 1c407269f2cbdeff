"""The knowledge pool: one module per kind, looked up by name in :data:`KNOWLEDGE`."""

from kdray.knowledge import attention, embedding, feature, finetune, relation, response  # noqa: F401  (registers)
from kdray.knowledge.base import (
    KNOWLEDGE,
    Knowledge,
    KnowledgeContext,
    ModelOutputs,
    Needs,
    build_knowledge,
    needs_of,
    register_knowledge,
    run_model,
)
from kdray.knowledge.finetune import REWARD_SCORES, brier_loss, pearson_loss, reward_loss, task_loss
from kdray.knowledge.normalize import NORMALIZE_MODES, LossNormalizer, kind_grad_norms
from kdray.knowledge.relation import fsp_matrix

__all__ = [
    "KNOWLEDGE",
    "NORMALIZE_MODES",
    "LossNormalizer",
    "Knowledge",
    "KnowledgeContext",
    "ModelOutputs",
    "Needs",
    "build_knowledge",
    "fsp_matrix",
    "kind_grad_norms",
    "needs_of",
    "register_knowledge",
    "run_model",
    "brier_loss",
    "reward_loss",
    "pearson_loss",
    "REWARD_SCORES",
    "task_loss",
]
