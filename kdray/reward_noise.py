"""``kdray reward-noise``: how many reward-set rows the actor-critic's reward needs, measured on real data.

The selector's reward is the drop of the student's loss on a fixed reward set across
a phase, and scoring that set every phase is most of the selector's cost
(``kdray bench``, ``selector/phase_reward_set``). A smaller set is cheaper and
noisier. This measures both on a real GLUE task: a real student (``student_layers``
of the teacher model, not fine-tuned) trains on the task's loss alone (no teacher
forward: the noise studied is which rows are scored, not the knowledge kinds), and at
every phase end the whole train holdout is scored row by row. The phase rewards of
fixed random subsets of ``sizes`` rows, as ``reward.eval_examples`` would draw them,
are compared with the reward of the whole holdout on the same phases:

- ``pearson``: correlation of a subset's per-phase rewards with the whole set's (mean over subsets);
- ``sign_agreement``: how often a subset says "better" / "worse" when the whole set does;
- ``relative_noise``: std of (subset reward - whole-set reward) over std of the whole-set reward;
- ``late_*``: the same over the last two thirds of the phases, where drops are small and noise matters most;
- ``seconds_per_phase``: the time to score that many rows with ``kdray.loop_data.RewardSet``.

Rows go to ``reward_noise.parquet`` and a table to ``reward_noise.md`` (with the command and machine).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kdray.config import EVAL_BATCH_SIZE, DataConfig, StudentConfig
from kdray.io import atomic_write, atomic_write_text

SIZES = (32, 64, 96, 128, 256)


def _agreement(sub: np.ndarray, full: np.ndarray) -> tuple[float, float, float]:
    """(pearson, sign agreement, relative noise) of per-phase rewards ``sub`` against ``full``."""
    pearson = float(np.corrcoef(sub, full)[0, 1]) if sub.std() > 0 and full.std() > 0 else math.nan
    sign = float(np.mean(np.sign(sub) == np.sign(full)))
    noise = float(np.std(sub - full) / full.std()) if full.std() > 0 else math.nan
    return pearson, sign, noise


def measure(task: str, model: str = "minilm-l6", student_layers: int = 3, steps: int = 400, phase_steps: int = 20,
            batch_size: int = 32, lr: float = 1e-4, max_seq_length: int = 64, subsets: int = 200, seed: int = 0,
            data: DataConfig | None = None, log: Any = print) -> pd.DataFrame:
    """Train, score the whole holdout at each phase end, and compare subset rewards (one row per subset size)."""
    from kdray.glue import get_task, make_collator, prepare_data
    from kdray.knowledge import KnowledgeContext, build_knowledge
    from kdray.loop_data import RewardSet, collate_rows, epoch_batches
    from kdray.models import build_student, load_teacher, load_tokenizer
    from kdray.step import distill_step, teacher_source
    from kdray.training import adamw, linear_schedule

    torch.manual_seed(seed)
    spec = get_task(task)
    tokenizer = load_tokenizer(model)
    prepared = prepare_data(task, tokenizer, data or DataConfig(), max_seq_length, seed)
    collate = make_collator(tokenizer)
    device = torch.device("cpu")
    teacher = load_teacher(model, spec, attentions=False).eval()
    student = build_student(teacher, StudentConfig(layers=student_layers), spec).train()
    ctx = KnowledgeContext(layer_map=((1, 1),), student_width=1, teacher_width=1, is_regression=spec.is_regression)
    knowledge = build_knowledge(["finetune"], ctx)
    optimizer = adamw([student, knowledge], lr, 0.01)
    scheduler = linear_schedule(optimizer, steps, 0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    holdout = RewardSet(prepared.holdout, collate, EVAL_BATCH_SIZE, device)
    n_rows = holdout.rows
    log(f"[reward-noise] {task}: {len(prepared.train)} train rows, holdout {n_rows} rows, {steps} steps, "
        f"phases of {phase_steps}")

    lengths = [int(x) for x in prepared.train["length"]]
    per_epoch = epoch_batches(lengths, batch_size, seed, 0, True)
    losses = [holdout.row_losses(student, spec.is_regression).double().cpu().numpy()]
    t0, train_seconds = time.perf_counter(), 0.0
    for step in range(steps):
        t_step = time.perf_counter()
        epoch, i = divmod(step, len(per_epoch))
        if i == 0 and epoch > 0:
            per_epoch = epoch_batches(lengths, batch_size, seed, epoch, True)
        rows = per_epoch[i]
        batch = collate_rows(prepared.train, rows, collate)
        distill_step(student, student, knowledge, ["finetune"], {"finetune": 1.0}, batch, rows,
                     teacher_source(teacher, None, device), optimizer, scheduler, scaler, 1.0)
        train_seconds += time.perf_counter() - t_step
        if (step + 1) % phase_steps == 0:
            losses.append(holdout.row_losses(student, spec.is_regression).double().cpu().numpy())
            log(f"[reward-noise] step {step + 1}/{steps}: holdout loss {losses[-1].mean():.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    per_row = np.stack(losses)  # [phases + 1, rows]
    rewards = per_row[:-1] - per_row[1:]  # per-row loss drop of each phase
    full = rewards.mean(axis=1)
    late = slice(len(full) // 3, None)

    g = np.random.default_rng(seed)
    out = []
    for n in [n for n in SIZES if n < n_rows] + [n_rows]:
        stats = []
        for _ in range(subsets if n < n_rows else 1):
            sub = rewards[:, g.choice(n_rows, size=n, replace=False)].mean(axis=1)
            stats.append(_agreement(sub, full) + _agreement(sub[late], full[late]))
        mean = np.nanmean(np.array(stats), axis=0)
        subset = RewardSet(prepared.holdout.select(range(n)), collate, EVAL_BATCH_SIZE, device)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            subset.loss(student, spec.is_regression)
            times.append(time.perf_counter() - t)
        out.append({"task": task, "rows": n, "holdout_rows": n_rows, "subsets": len(stats), "phases": len(full),
                    "phase_steps": phase_steps, "pearson": mean[0], "sign_agreement": mean[1],
                    "relative_noise": mean[2], "late_pearson": mean[3], "late_sign_agreement": mean[4],
                    "late_relative_noise": mean[5], "seconds_per_phase": float(np.median(times)),
                    "train_step_seconds": train_seconds / steps})
        log(f"[reward-noise] {n} rows: pearson {mean[0]:.3f} (late {mean[3]:.3f}), sign {mean[1]:.2f} "
            f"(late {mean[4]:.2f}), {out[-1]['seconds_per_phase']:.3f} s/phase")
    return pd.DataFrame(out)


def render(table: pd.DataFrame, command: str) -> str:
    """The markdown page: what was measured, on what, and the table."""
    import platform

    lines = [
        "# Reward-set size: noise against cost", "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)", "",
        "Per task: a student trains on the task loss; at every phase end the whole train holdout is scored row by "
        "row. Each row of the table compares the phase rewards (loss drop across the phase) of fixed random "
        "subsets of `rows` holdout rows with the whole holdout's, over all phases and over the last two thirds "
        "(`late`). `s/phase` is the time to score that many rows once; a training step's time is beside it.", "",
        "| task | rows | of holdout | phases | pearson | sign agree | rel. noise | late pearson | late sign agree "
        "| late rel. noise | s/phase | s/train step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(f"| {r.task} | {r.rows} | {r.holdout_rows} | {r.phases} | {r.pearson:.3f} | {r.sign_agreement:.2f} "
                     f"| {r.relative_noise:.2f} | {r.late_pearson:.3f} | {r.late_sign_agreement:.2f} "
                     f"| {r.late_relative_noise:.2f} | {r.seconds_per_phase:.3f} | {r.train_step_seconds:.3f} |")
    return "\n".join(lines) + "\n"


def run(tasks: list[str], out_dir: str, **kwargs: Any) -> pd.DataFrame:
    """Measure every task, then write ``reward_noise.parquet`` and ``reward_noise.md`` atomically."""
    table = pd.concat([measure(t, **kwargs) for t in tasks], ignore_index=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = "kdray " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("kdray") else "kdray reward-noise"
    atomic_write(out / "reward_noise.parquet", lambda fh: table.to_parquet(fh, index=False))
    atomic_write_text(out / "reward_noise.md", render(table, command))
    return table
