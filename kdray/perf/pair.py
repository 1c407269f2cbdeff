"""A teacher/student pair and its batches at a named shape, built the way kdray builds them.

Timing needs no trained weights, so the teacher is a seeded random BERT of the shape's size
(``bert-base``: 12 layers, 768 wide, the paper's teacher), and the student copies every
other layer of it with :func:`kdray.models.build_student`, as ``student.init: teacher_layers``
does. Batches are plain dicts of full-length rows ([CLS] a [SEP] b [SEP], no padding: the
worst case of a length-bucketed batch), the same objects for every side of a comparison.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedModel

from kdray.config import KnowledgeConfig, StudentConfig
from kdray.glue import get_task
from kdray.knowledge import KnowledgeContext
from kdray.models import TINY_BERT_CONFIG, build_student

VOCAB = int(TINY_BERT_CONFIG["vocab_size"])  # BERT's uncased WordPiece vocabulary, as every shape here uses


@dataclass(frozen=True)
class Shape:
    """Model sizes and the batch a comparison runs at."""

    name: str
    teacher_layers: int
    width: int
    heads: int
    intermediate: int
    student_layers: int
    batch: int
    seq_len: int


SHAPES: dict[str, Shape] = {
    # tiny-bert's sizes: fast enough for tests
    "tiny": Shape("tiny", 4, 64, 4, 128, 2, 8, 32),
    # all-MiniLM-L6's sizes with a 3-layer student (kdray's CPU-scale setting)
    "minilm": Shape("minilm", 6, 384, 12, 1536, 3, 32, 128),
    # the paper's scale: BERT-base teacher, 6-layer student
    "bert-base": Shape("bert-base", 12, 768, 12, 3072, 6, 32, 128),
}


def random_teacher(shape: Shape, eager: bool, seed: int = 0) -> PreTrainedModel:
    """A seeded random-init BERT classifier of ``shape`` (eager attention when attention maps are needed, else SDPA)."""
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=shape.width,
        num_hidden_layers=shape.teacher_layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
        num_labels=2,
        attn_implementation="eager" if eager else "sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(cfg)
    return model


@dataclass
class Pair:
    """A frozen teacher and one student copy per side of a comparison (same initial weights)."""

    shape: Shape
    teacher: PreTrainedModel
    students: list[PreTrainedModel]
    context: KnowledgeContext


def build_pair(shape: Shape, eager: bool, sides: int = 2, device: torch.device | str = "cpu") -> Pair:
    """Teacher and ``sides`` identical students (``build_student``, every other layer) plus kdray's knowledge context."""
    spec = get_task("rte")  # two labels; only the head size matters for timing
    teacher = random_teacher(shape, eager).to(device).eval()
    teacher.requires_grad_(False)
    student = build_student(teacher, StudentConfig(layers=shape.student_layers), spec).to(device)
    students = [student] + [copy.deepcopy(student) for _ in range(sides - 1)]
    for s in students:
        s.train()
    kcfg = KnowledgeConfig()
    ctx = KnowledgeContext.between(student, teacher, kcfg.layer_map, kcfg.temperature, kcfg.feature_mode)
    return Pair(shape, teacher, students, ctx)


def synthetic_batches(shape: Shape, count: int, device: torch.device | str = "cpu", seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` plain-dict batches of full-length sentence pairs with random labels (no ``BatchEncoding``)."""
    g = torch.Generator().manual_seed(seed)
    b, t = shape.batch, shape.seq_len
    out = []
    for _ in range(count):
        ids = torch.randint(1000, VOCAB, (b, t), generator=g)
        ids[:, 0], ids[:, t // 2], ids[:, -1] = 101, 102, 102
        types = torch.zeros(b, t, dtype=torch.long)
        types[:, t // 2 + 1 :] = 1
        batch = {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.long), "token_type_ids": types,
                 "labels": torch.randint(0, 2, (b,), generator=g)}
        out.append({k: v.to(device) for k, v in batch.items()})
    return out


def stack_rows(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate equally long rows of tensors into one batch (the synthetic rows here need no padding)."""
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
