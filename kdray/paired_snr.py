"""``kdray reward-snr``: the paired reward's signal-to-noise ratio next to the unpaired reward's, on real data.

Issue #15 found that the unpaired per-phase reward (the reward-set loss drop of one phase) cannot see the
action, while one phase run from one fork under several weightings can. This measures both, per phase
boundary, on the loop's own pieces (:func:`kdray.run_setup.set_up`, :class:`kdray.loop.Loop`,
``TrainingState.snapshot()/restore()``, :func:`kdray.branches.train_steps` and
:func:`kdray.branches.reward_set_loss`, the selector's reward-set loss).

Procedure, per task and seed: a study-like run (``--steps`` steps, selector ``all``) trains; at
``--boundaries`` phase starts spread over it (steps ``i * steps // N`` rounded down to a phase multiple,
i = 0..N-1) the state is forked and every candidate weighting (``all``: every kind 1; ``finetune``: the
task loss only; ``teacher``: the teacher kinds only) trains one phase (``--phase-steps``) from the fork on
the same batches, ``--replicates`` times: replicate 0 with the fork's own RNG (what the loop's branches
share), replicate r > 0 with torch's RNG reseeded to ``seed * 1_000_003 + boundary * 101 + r`` after the
restore, so only the dropout masks differ. Each branch is scored on the reward set. The main run then
continues from the fork with ``all`` weights (the branches are dropped), so replicate 0 of ``all`` is the
main run's own next phase, bit for bit.

Definitions (per boundary; std = sample std, ddof 1; L[c, r] = reward-set loss after candidate c,
replicate r; the reference is the first candidate):

- signal = std over candidates of mean_r L[c, r] (the action's effect; with few replicates it keeps a
  residual noise of about noise / sqrt(replicates), so it is slightly biased up);
- paired noise = sqrt(mean_c var_r L[c, r]), the pooled within-candidate dropout spread;
- advantage noise = sqrt(mean over non-reference c of var_r (L[ref, r] - L[c, r])), the noise of the
  advantage the bandit learns from (the candidates of one replicate share dropout RNG);
- unpaired noise = std over all phases of the main run of its per-phase drops L(phase start) - L(phase
  end) on consecutive batches (batch noise plus the progress trend), one value per run;
- paired SNR = signal / paired noise; advantage SNR = signal / advantage noise; unpaired SNR =
  signal / unpaired noise (the unpaired reward of a phase differs between actions by the same spread).

Rows go to ``paired_snr.parquet`` (task x seed x boundary x candidate x replicate), the main run's
reward-set loss at every phase end to ``main_run.parquet``, and the tables to ``paired_snr.md``, after each
run; ``--resume`` keeps the runs already there that used the same plan and measures the rest.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from kdray.branches import check_finite, reward_set_loss, train_steps
from kdray.config import RunConfig
from kdray.io import atomic_write_parquet, atomic_write_text
from kdray.loop import Loop
from kdray.run_setup import RunSetup, set_up
from kdray.state import TrainingState

POOL = ("finetune", "response", "feature", "relation")
CANDIDATES: dict[str, dict[str, float]] = {
    "all": {k: 1.0 for k in POOL},
    "finetune": {"finetune": 1.0},
    "teacher": {k: 1.0 for k in POOL if k != "finetune"},
}


@dataclass(frozen=True)
class Plan:
    """What one measurement runs (the CLI's flags)."""

    candidates: tuple[str, ...] = ("all", "finetune", "teacher")
    boundaries: int = 4
    steps: int = 160
    phase_steps: int = 20
    replicates: int = 2
    score: str = "ce"  # selector.reward.score: what every reward-set loss here is (ce, brier, pearson)


def parse_candidates(text: str) -> tuple[str, ...]:
    """``all,finetune,teacher`` -> names; an unknown or repeated name, or fewer than two, is a ValueError."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidate {unknown[0]!r}; known: {', '.join(CANDIDATES)}")
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"--candidates needs at least two distinct names, got {text!r}")
    return names


def boundary_steps(plan: Plan) -> list[int]:
    """The fork steps: ``--boundaries`` phase starts spread over the run, each with a whole phase after it."""
    if plan.boundaries < 1:
        raise ValueError(f"--boundaries must be >= 1, got {plan.boundaries}")
    if plan.phase_steps < 1 or plan.replicates < 2:
        raise ValueError(f"--phase-steps must be >= 1 and --replicates >= 2, got {plan.phase_steps}, {plan.replicates}")
    last = plan.steps - plan.phase_steps  # the last start with a whole phase after it
    steps = sorted({min(last, (i * plan.steps // plan.boundaries) // plan.phase_steps * plan.phase_steps)
                    for i in range(plan.boundaries)})
    if last < 0 or len(steps) < plan.boundaries:
        raise ValueError(f"{plan.boundaries} boundaries with phases of {plan.phase_steps} steps do not fit "
                         f"{plan.steps} steps; raise --steps")
    return steps


def check_teacher(path: str, task: str) -> None:
    """A fine-tuned teacher folder for ``task`` (kdray's teacher stage writes config.json and metrics.json)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--teacher-dir {path}: no config.json there; give a folder saved by kdray's teacher stage")
    metrics = folder / "metrics.json"
    if metrics.is_file():
        trained_for = json.loads(metrics.read_text()).get("task")
        if trained_for not in (None, task):
            raise ValueError(f"--teacher-dir {path} was fine-tuned for {trained_for}, not {task}")


def study_config(task: str, seed: int, plan: Plan, data: dict[str, Any], output_dir: str,
                 max_seq_length: int = 128, teacher_cache: bool = False) -> RunConfig:
    """A glue_study trial (3-layer every_other student, pool of four, lr 1e-4, batch 32) with selector ``all``."""
    return RunConfig.model_validate({
        "task": task, "data": data, "output_dir": output_dir,
        "student": {"init": "teacher_layers", "layers": 3, "layer_choice": "every_other"},
        "train": {"max_steps": plan.steps, "batch_size": 32, "lr": 1e-4, "max_seq_length": max_seq_length,
                  "seed": seed, "progress": False, "eval_every": 10**9, "checkpoint_every": None,
                  "teacher_cache": teacher_cache},
        "selector": {"name": "all", "phase_steps": plan.phase_steps, "trace_reward_set": True,
                     "reward": {"score": plan.score}},
        "knowledge": {"pool": list(POOL)},
    })


def dropout_seed(seed: int, boundary: int, replicate: int) -> int:
    """The RNG seed of a replicate > 0 (replicate 0 keeps the fork's RNG, as the loop's branches do)."""
    return seed * 1_000_003 + boundary * 101 + replicate


def branch_losses(setup: RunSetup, state: TrainingState, candidates: tuple[str, ...], replicates: int,
                  seed: int) -> list[dict[str, Any]]:
    """Every candidate x replicate trained for one phase from a fork of ``state``, scored; the state is put back."""
    steps = setup.config.selector.phase_steps
    batches = [setup.order.rows(state.segment, s) for s in range(state.step, state.step + steps)]
    fork = state.snapshot()
    before = reward_set_loss(setup, state)
    rows = []
    for name in candidates:
        for r in range(replicates):
            state.restore(fork)
            rng = dropout_seed(seed, state.step, r) if r else -1
            if r:
                torch.manual_seed(rng)
            t0 = time.perf_counter()
            branch = train_steps(setup, state, CANDIDATES[name], batches)
            check_finite(branch.losses, f"{setup.config.task} seed {seed}, {name} from step {state.step}",
                         state.step + 1, state.step + steps)
            rows.append({"boundary": state.step, "candidate": name, "weights": json.dumps(CANDIDATES[name]),
                         "replicate": r, "dropout_seed": rng, "loss_before": before,
                         "loss_after": reward_set_loss(setup, state), "train_loss": branch.loss,
                         "seconds": time.perf_counter() - t0})
    state.restore(fork)
    return rows


def main_run_losses(state: TrainingState) -> list[dict[str, Any]]:
    """The main run's reward-set loss at each phase end, from the loop's traces (one row per phase)."""
    seen: dict[int, float] = {}
    for t in state.traces:
        seen.setdefault(int(t["step"]), float(t["reward_set_loss"]))
    return [{"step": s, "reward_set_loss": v} for s, v in sorted(seen.items())]


def measure(config: RunConfig, teacher_dir: str, plan: Plan, log: Callable[[str], Any] = print
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One task and seed: (branch rows, main-run rows) of the procedure in the module docstring."""
    task, seed = config.task, config.train.seed
    loop = Loop(set_up(config, teacher_dir))
    loop.start_segment(0)
    st, rows = loop.state, []
    start = reward_set_loss(loop.setup, st)
    for b in boundary_steps(plan):
        loop.run_segment(until=b)
        t0 = time.perf_counter()
        rows += branch_losses(loop.setup, st, plan.candidates, plan.replicates, seed)
        spread = {r["candidate"]: round(r["loss_after"], 4) for r in rows[-len(plan.candidates) * plan.replicates:]}
        log(f"[reward-snr] {task} seed {seed} step {b}: {spread} ({time.perf_counter() - t0:.0f} s)")
    loop.run_segment()
    main = pd.DataFrame([{"step": 0, "reward_set_loss": start}] + main_run_losses(st))
    loop.close()
    return pd.DataFrame(rows).assign(task=task, seed=seed), main.assign(task=task, seed=seed)


def _std(x: Any) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.std(x, ddof=1)) if len(x) > 1 else math.nan


def summarise(branches: pd.DataFrame, main: pd.DataFrame) -> pd.DataFrame:
    """Per task x seed x boundary: signal, the three noises and the three SNRs (definitions: module docstring)."""
    out = []
    for (task, seed), group in branches.groupby(["task", "seed"], sort=True):
        losses = main[(main.task == task) & (main.seed == seed)].sort_values("step")["reward_set_loss"].to_numpy()
        unpaired = _std(losses[:-1] - losses[1:])
        for b, at in group.groupby("boundary", sort=True):
            table = at.pivot(index="replicate", columns="candidate", values="loss_after")
            ref = at.candidate.iloc[0]
            signal = _std(table.mean(axis=0))
            paired = math.sqrt(float(np.mean([np.var(table[c], ddof=1) for c in table])))
            others = [c for c in table if c != ref]
            advantage = math.sqrt(float(np.mean([np.var(table[ref] - table[c], ddof=1) for c in others])))
            out.append({"task": task, "seed": seed, "boundary": b, "signal": signal, "paired_noise": paired,
                        "advantage_noise": advantage, "unpaired_noise": unpaired,
                        "paired_snr": signal / paired if paired > 0 else math.inf,
                        "advantage_snr": signal / advantage if advantage > 0 else math.inf,
                        "unpaired_snr": signal / unpaired if unpaired > 0 else math.inf})
    return pd.DataFrame(out)


def seed_stability(branches: pd.DataFrame) -> pd.DataFrame:
    """Per task: how much of the paired advantage do the candidate and the boundary predict, in every seed alike?

    The advantage ``a[s, b, c]`` = mean over replicates of L[ref] - L[c] (non-reference candidates; 0 means as
    good as the reference). Over the cells (boundary, candidate) with n seeds each: ``mean_advantage`` = the mean advantage,
    ``seed_sd`` = the pooled within-cell std over seeds, ``cell_effect_sd`` = the std of the cells' true means
    (var of the cell means minus seed variance / n, the one-way ANOVA estimate, floored at 0), and
    ``predictable_share`` = (mean² + cell effect²) / (that + seed variance): the share of the advantage's mean
    square about 0 that a learner knowing each cell's true mean gets right on a new seed. The rest changes from
    seed to seed with the phase's batches and the student's state; dropout is a small part of it (advantage noise).
    ``correlation_ceiling`` = sqrt(cell effect² / (cell effect² + seed variance)): the correlation that learner's
    predictions reach with the advantages of a new seed (a correlation ignores the common mean), the bar for
    issue 15's "prediction correlates >= 0.5 with the realised target" from candidate and progress alone.
    """
    out = []
    for task, group in branches.groupby("task", sort=False):
        ref = group.candidate.iloc[0]
        table = group.pivot_table(index=["seed", "boundary", "replicate"], columns="candidate", values="loss_after")
        adv = pd.concat([(table[ref] - table[c]).rename("adv").reset_index().assign(candidate=c)
                         for c in table if c != ref])
        cells = adv.groupby(["seed", "boundary", "candidate"]).adv.mean().groupby(level=["boundary", "candidate"])
        n = int(cells.size().min())
        seed_var = float(cells.var(ddof=1).mean()) if n > 1 else math.nan
        means = cells.mean()
        effect = max(float(means.var(ddof=1)) - seed_var / n, 0.0) if len(means) > 1 and n > 1 else math.nan
        known = float(means.mean()) ** 2 + effect
        out.append({"task": task, "cells": len(means), "seeds": n, "mean_advantage": float(means.mean()),
                    "cell_effect_sd": math.sqrt(effect), "seed_sd": math.sqrt(seed_var),
                    "predictable_share": known / (known + seed_var) if known + seed_var > 0 else math.nan,
                    "correlation_ceiling": (math.sqrt(effect / (effect + seed_var)) if effect + seed_var > 0
                                            else math.nan)})
    return pd.DataFrame(out)


def _pm(x: pd.Series, fmt: str) -> str:
    return f"{x.mean():{fmt}} ± {x.std(ddof=1):{fmt}}" if len(x) > 1 else f"{x.mean():{fmt}}"


def render(summary: pd.DataFrame, plan: Plan, command: str, seconds: float,
           stability: pd.DataFrame | None = None) -> str:
    """The markdown page: definitions, per task (mean ± std over seeds), per boundary, and seed stability."""
    stability = pd.DataFrame() if stability is None else stability
    doc = (__doc__ or "").split("Procedure", 1)[1].split("Rows go to", 1)[0]
    lines = ["# Paired against unpaired reward: signal-to-noise per phase", "",
             f"Command: `{command}`  ",
             f"Candidates: {', '.join(plan.candidates)} (reference: {plan.candidates[0]}); {plan.replicates} dropout "
             f"replicates; boundaries at steps {boundary_steps(plan)} of a {plan.steps}-step run; phases of "
             f"{plan.phase_steps} steps; reward-set loss: {plan.score} (selector.reward.score).  ",
             f"Machine: {platform.machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
             f"{seconds / 60:.1f} min in all.", "",
             "Procedure" + doc.rstrip(), "",
             "## Per task (per seed: mean over boundaries; then mean ± std over seeds)", "",
             "| task | seeds | signal | paired noise | advantage noise | unpaired noise | paired SNR | advantage SNR "
             "| unpaired SNR |", "|---|---|---|---|---|---|---|---|---|"]
    cols = ["signal", "paired_noise", "advantage_noise", "unpaired_noise", "paired_snr", "advantage_snr",
            "unpaired_snr"]
    per_seed = summary.groupby(["task", "seed"])[cols].mean().reset_index()
    for task, g in per_seed.groupby("task", sort=False):
        cells = [_pm(g[c], ".4f") for c in cols[:4]] + [_pm(g[c], ".2f") for c in cols[4:]]
        lines.append(f"| {task} | {len(g)} | " + " | ".join(cells) + " |")
    lines += ["", "## Per boundary (mean ± std over seeds)", "",
              "| task | step | signal | paired noise | advantage noise | unpaired noise | paired SNR | advantage SNR "
              "| unpaired SNR |", "|---|---|---|---|---|---|---|---|---|"]
    for (task, b), g in summary.groupby(["task", "boundary"], sort=False):
        cells = [_pm(g[c], ".4f") for c in cols[:4]] + [_pm(g[c], ".2f") for c in cols[4:]]
        lines.append(f"| {task} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines + _stability_lines(stability)) + "\n"


def _stability_lines(stability: pd.DataFrame) -> list[str]:
    if stability.empty:
        return []
    lines = ["", "## Does the advantage repeat across seeds? (`seed_stability`)", "",
             "| task | cells (boundary x candidate) | seeds | mean advantage | cell-effect sd | seed-to-seed sd | "
             "predictable share | correlation ceiling |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.task} | {r.cells} | {r.seeds} | {r.mean_advantage:+.4f} | {r.cell_effect_sd:.4f} | {r.seed_sd:.4f} | "
              f"{r.predictable_share:.2f} | {r.correlation_ceiling:.2f} |" for r in stability.itertuples()]
    return lines + ["", "Advantage = reference minus candidate (0: as good as the reference), mean over replicates. "
                        "Predictable share: of the advantage's mean square about 0, the part that each cell's true "
                        "mean (one-way ANOVA estimate) carries, i.e. what candidate and training progress can "
                        "predict on a new seed; the rest changes from seed to seed (the phase's batches, the "
                        "student's state), little of it with dropout (advantage noise). Correlation ceiling: the "
                        "correlation of those true cell means with a new seed's advantages, the most a predictor "
                        "of the advantage from candidate and progress alone can reach."]


def _plan_columns(plan: Plan) -> dict[str, Any]:
    """The plan as columns of every row, so ``--resume`` keeps only runs measured the same way."""
    return {"steps": plan.steps, "phase_steps": plan.phase_steps, "boundaries": plan.boundaries,
            "candidates": ",".join(plan.candidates), "replicates": plan.replicates, "score": plan.score}


def _recorded(out: Path, plan: Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(branch rows, main-run rows) already in ``out`` from the same plan (empty frames when none)."""
    if not (out / "paired_snr.parquet").is_file() or not (out / "main_run.parquet").is_file():
        return pd.DataFrame(), pd.DataFrame()
    rows, main = pd.read_parquet(out / "paired_snr.parquet"), pd.read_parquet(out / "main_run.parquet")
    if "score" not in main:  # written before selector.reward.score existed: cross-entropy
        rows, main = rows.assign(score="ce"), main.assign(score="ce")
    same = np.logical_and.reduce([main[k] == v for k, v in _plan_columns(plan).items()])
    keep = set(map(tuple, main.loc[same, ["task", "seed"]].drop_duplicates().to_numpy().tolist()))
    pick = lambda f: f[[(t, s) in keep for t, s in zip(f.task, f.seed)]]  # noqa: E731
    return pick(rows), pick(main)


def _write(out: Path, rows: pd.DataFrame, main: pd.DataFrame, plan: Plan, command: str) -> pd.DataFrame:
    """Both Parquet files and the markdown, atomically; the summary."""
    summary = summarise(rows, main)
    seconds = float(main.drop_duplicates(["task", "seed"])["run_seconds"].sum())
    atomic_write_parquet(out / "paired_snr.parquet", pa.Table.from_pandas(rows, preserve_index=False))
    atomic_write_parquet(out / "main_run.parquet", pa.Table.from_pandas(main, preserve_index=False))
    atomic_write_text(out / "paired_snr.md", render(summary, plan, command, seconds, seed_stability(rows)))
    return summary


def run(tasks: list[str], teacher_dirs: list[str], seeds: list[int], plan: Plan, out_dir: str,
        data: dict[str, Any], command: str = "kdray reward-snr", log: Callable[[str], Any] = print,
        resume: bool = False, **config: Any) -> pd.DataFrame:
    """Measure every task and seed (with ``resume``: those not yet in ``out_dir`` with this plan), writing the
    Parquet files and the markdown after each run; the summary."""
    boundary_steps(plan)  # bad input fails before any model loads
    if len(teacher_dirs) != len(tasks):
        raise ValueError(f"--teacher-dir needs one folder per task ({len(tasks)}), got {len(teacher_dirs)}")
    for task, path in zip(tasks, teacher_dirs):
        check_teacher(path, task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, main = _recorded(out, plan) if resume else (pd.DataFrame(), pd.DataFrame())
    done = set() if main.empty else set(zip(main.task, main.seed))
    summary = pd.DataFrame()
    for task, path in zip(tasks, teacher_dirs):
        for seed in [s for s in seeds if (task, s) not in done]:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="kdray-reward-snr-") as tmp:
                b, m = measure(study_config(task, seed, plan, data, tmp, **config), path, plan, log)
            extra = {**_plan_columns(plan), "run_seconds": time.perf_counter() - t0}
            rows = pd.concat([rows, b.assign(**extra)], ignore_index=True)
            main = pd.concat([main, m.assign(**extra)], ignore_index=True)
            summary = _write(out, rows, main, plan, command)
    if summary.empty:
        if rows.empty:
            raise ValueError("nothing to measure")
        summary = _write(out, rows, main, plan, command)
    return summary
