"""The models, optimiser and batches one bench setting times, built with the loop's public pieces.

The optimiser and schedule are :func:`kdray.training.adamw` / :func:`kdray.training.linear_schedule`
(what ``kdray.run_setup`` builds), precision is :func:`kdray.training.amp_dtype` ("auto": bf16 on GPUs
that have it, fp32 on CPUs), and the step and teacher source come from :mod:`kdray.step`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from kdray.bench.rows import ALL_KINDS, CACHED_KINDS, Sizes
from kdray.config import EVAL_BATCH_SIZE, KnowledgeConfig, StudentConfig
from kdray.glue import get_task
from kdray.knowledge import KnowledgeContext, build_knowledge, needs_of
from kdray.loop_data import collate_rows, to_device
from kdray.models import build_student, load_teacher
from kdray.perf.pair import SHAPES, random_teacher, stack_rows
from kdray.perf.timing import clock
from kdray.teacher_outputs import build_teacher_cache
from kdray.training import adamw, amp_dtype, autocast_for, linear_schedule


def bench_teacher(name: str, spec: Any, eager: bool) -> torch.nn.Module:
    """A local teacher by name, or ``random:<shape>``: a seeded random-init BERT of a ``kdray.perf`` shape."""
    if name.startswith("random:"):
        return random_teacher(SHAPES[name.split(":", 1)[1]], eager)
    return load_teacher(name, spec, attentions=eager)


class BenchModels:
    """Teacher, student, knowledge pool and optimiser for one attention kernel, built as ``distill.train`` builds them.

    ``distill.train`` loads eager attention only when ``attention`` is in the pool (it needs the
    attention maps) and SDPA otherwise, so each configuration is timed with the kernel a user gets.
    """

    def __init__(self, sizes: Sizes, spec: Any, eager: bool, device: torch.device) -> None:
        torch.manual_seed(0)
        self.teacher = bench_teacher(sizes.teacher, spec, eager).to(device).eval()
        self.teacher.requires_grad_(False)
        self.student = build_student(self.teacher, StudentConfig(layers=sizes.student_layers), spec).to(device)
        self.n_student = self.student.config.num_hidden_layers
        self.n_teacher = self.teacher.config.num_hidden_layers
        kcfg = KnowledgeConfig()
        self.kctx = KnowledgeContext.between(self.student, self.teacher, kcfg.layer_map, kcfg.temperature,
                                             kcfg.feature_mode)
        self.pool = ALL_KINDS if eager else CACHED_KINDS
        self.knowledge = build_knowledge(self.pool, self.kctx).to(device)
        self.optimizer = adamw([self.student, self.knowledge], 5e-5, 0.01)
        self.scheduler = linear_schedule(self.optimizer, 10**6, 0.1)
        self.student.train()

    def cache_layers(self) -> set[int]:
        """The layers ``distill.train`` caches for a pool: every kind's teacher hidden states plus the last layer."""
        return set(needs_of(self.knowledge, {k: 1.0 for k in self.pool}).teacher_hidden) | {self.n_teacher}

    def cache_attention_layers(self) -> frozenset[int]:
        """The teacher attention maps the pool's ``attention`` kind reads (cached when they fit the size limit)."""
        return needs_of(self.knowledge, {k: 1.0 for k in self.pool}).teacher_attentions


def synthetic_rows(n: int, seq_len: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    """Full-length pairs ([CLS] a [SEP] b [SEP], no padding): the worst case of a length-bucketed batch."""
    g = torch.Generator().manual_seed(0)
    t = seq_len
    rows = []
    for _ in range(n):
        ids = torch.randint(1000, vocab, (t,), generator=g)
        ids[0], ids[t // 2], ids[-1] = 101, 102, 102
        types = torch.zeros(t, dtype=torch.long)
        types[t // 2 + 1 :] = 1
        label = int(torch.randint(0, 2, (1,), generator=g))
        rows.append({"input_ids": ids, "attention_mask": torch.ones(t, dtype=torch.long),
                     "token_type_ids": types, "labels": torch.tensor(label)})
    return rows


class BenchSetup:
    """Both attention kernels' models and the synthetic rows every configuration draws its batches from."""

    def __init__(self, sizes: Sizes, work: Path, device: torch.device) -> None:
        self.sizes = sizes
        self.device = device
        self.spec = get_task("rte")
        self.eager = BenchModels(sizes, self.spec, True, self.device)
        self.sdpa = BenchModels(sizes, self.spec, False, self.device)
        amp = amp_dtype("auto", device)  # the loop's mixed precision
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        self.autocast = autocast_for(device, amp)
        # identical for every configuration
        self.rows = synthetic_rows(sizes.cache_rows, sizes.seq_len, int(self.eager.teacher.config.vocab_size))
        self.work = work
        self._batch_i = 0

    collate = staticmethod(stack_rows)

    def next_batch(self) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The next batch of ``sizes.batch`` rows (cycling over the rows) and its row indices."""
        b = self.sizes.batch
        n_batches = len(self.rows) // b
        start = (self._batch_i % n_batches) * b
        self._batch_i += 1
        rows = list(range(start, start + b))
        return to_device(collate_rows(self.rows, rows, self.collate), self.device), rows

    def build_cache(self) -> tuple[Any, float, int, list[int]]:
        """Build the teacher-output cache over all rows, the all-kinds pool's attention maps included (as
        ``distill.train`` builds it for that pool); returns (cache, seconds, bytes on disk, layers)."""
        layers = self.eager.cache_layers()
        folder = self.work / f"teacher_outputs-{self.sizes.teacher.replace(':', '_')}-{self.sizes.seq_len}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = clock()
        # the eager teacher (same weights as the SDPA one): only it returns attention maps
        cache = build_teacher_cache(self.eager.teacher, self.rows, self.collate, layers, folder, EVAL_BATCH_SIZE,
                                    self.device, self.eager.cache_attention_layers())
        seconds = clock() - t0
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        cache.keep_on(self.device)  # as distill.train does: on a GPU the cache moves there once when it fits
        return cache, seconds, size, sorted(layers)
