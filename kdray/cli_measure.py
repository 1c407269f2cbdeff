"""The ``kdray`` commands that measure kdray itself (bench, reward-noise, reward-snr): their options and
what they run. :mod:`kdray.cli` registers them beside the commands that train and report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from kdray.config import GLUE_TASKS


def _cmd_bench(args: argparse.Namespace) -> int:
    from kdray.bench import run_bench

    out = args.out or str(_scratch("bench"))
    print(f"[kdray] bench writes to {out}", flush=True)
    return run_bench(quick=args.quick, out_dir=out, device=args.device, peers=args.peers, scale=args.scale)


def _cmd_reward_noise(args: argparse.Namespace) -> int:
    from kdray.config import DataConfig
    from kdray.reward_noise import run

    data = DataConfig(source=args.source, dir=args.data_dir, max_train_samples=args.max_train_samples)
    out = args.out or str(_scratch("reward_noise"))
    print(f"[kdray] reward-noise writes to {out}", flush=True)
    run(args.tasks, out, model=args.model, student_layers=args.student_layers, steps=args.steps,
        phase_steps=args.phase_steps, max_seq_length=args.max_seq_length, data=data)
    return 0


def _cmd_reward_snr(args: argparse.Namespace) -> int:
    import torch

    from kdray.paired_snr import Plan, parse_candidates, run

    if args.threads:
        torch.set_num_threads(args.threads)
    plan = Plan(candidates=parse_candidates(args.candidates), boundaries=args.boundaries, steps=args.steps,
                phase_steps=args.phase_steps, replicates=args.replicates, score=args.score)
    data = {"source": args.source, "dir": args.data_dir, "max_train_samples": args.max_train_samples}
    out = args.out or str(_scratch("reward_snr"))
    print(f"[kdray] reward-snr writes to {out}", flush=True)
    run(args.tasks, args.teacher_dir, args.seeds, plan, out, data, command="kdray " + " ".join(sys.argv[1:]),
        resume=args.resume, max_seq_length=args.max_seq_length, teacher_cache=args.teacher_cache)
    return 0


def _scratch(name: str) -> Path:
    """Default output of the measurement commands: under kdray's cache, never the committed results/ folder."""
    from kdray.paths import cache_root

    return cache_root() / name


def add_measure_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """bench, reward-noise, reward-snr: the commands that measure kdray itself."""
    p = add("bench", help="time the training step, selector, caches, data loading and Ray overhead")
    p.add_argument("--quick", action="store_true", help="small sizes; fails when a ratio target is missed")
    p.add_argument("--out", default=None,
                   help="folder for bench.parquet and bench.md (default: <kdray cache>/bench, e.g. ~/.cache/kdray)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where steps are timed (auto: a GPU when torch sees one)")
    p.add_argument("--peers", action="store_true",
                   help="also time TextBrewer on the same models and batches (pip install -e .[peers])")
    p.add_argument("--scale", choices=["quick", "full", "paper"], default=None,
                   help="model sizes: paper = a BERT-base-sized teacher and 6-layer student (default: quick with "
                        "--quick, else full)")
    p.set_defaults(func=_cmd_bench)

    p = add("reward-noise", help="how the reward's noise and cost depend on the reward-set size (real data)")
    p.add_argument("tasks", nargs="+", choices=GLUE_TASKS)
    p.add_argument("--model", default="minilm-l6", help="the student's source model (short name, folder or hub id)")
    p.add_argument("--student-layers", type=int, default=3, help="student encoder layers")
    p.add_argument("--steps", type=int, default=400, help="training steps")
    p.add_argument("--phase-steps", type=int, default=20, help="steps per selection phase")
    p.add_argument("--max-seq-length", type=int, default=64, help="truncation length")
    p.add_argument("--source", choices=["auto", "hub", "local"], default="auto", help="where GLUE comes from")
    p.add_argument("--data-dir", default=None, help="official GLUE TSV folder (default: $KDRAY_GLUE_DIR)")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--out", default=None,
                   help="folder for reward_noise.parquet and .md (default: <kdray cache>/reward_noise)")
    p.set_defaults(func=_cmd_reward_noise)

    p = add("reward-snr", help="the paired reward's signal-to-noise ratio next to the unpaired one's (real data)")
    p.add_argument("tasks", nargs="+", choices=GLUE_TASKS)
    p.add_argument("--teacher-dir", nargs="+", required=True,
                   help="a fine-tuned teacher folder (from kdray's teacher stage) per task, in the tasks' order")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="train.seed of each measured run")
    p.add_argument("--boundaries", type=int, default=4, help="phase starts per run at which the state is forked")
    p.add_argument("--steps", type=int, default=160, help="steps of the main (all-weights) run")
    p.add_argument("--phase-steps", type=int, default=20, help="steps of each forked phase")
    p.add_argument("--candidates", default="all,finetune,teacher",
                   help="weightings per fork (all, finetune, teacher); the first is the advantage's reference")
    p.add_argument("--replicates", type=int, default=2, help="dropout replicates per candidate and fork")
    p.add_argument("--score", choices=["ce", "brier", "pearson"], default="ce",
                   help="what the reward set is scored with (selector.reward.score)")
    p.add_argument("--max-seq-length", type=int, default=128, help="truncation length")
    p.add_argument("--max-train-samples", type=int, default=2000, help="train rows (data.max_train_samples)")
    p.add_argument("--teacher-cache", action="store_true", help="precompute the teacher's outputs once per task")
    p.add_argument("--resume", action="store_true",
                   help="keep the task/seed runs already in --out that used the same plan; measure the rest")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--source", choices=["auto", "hub", "local"], default="auto", help="where GLUE comes from")
    p.add_argument("--data-dir", default=None, help="official GLUE TSV folder (default: $KDRAY_GLUE_DIR)")
    p.add_argument("--out", default=None,
                   help="folder for paired_snr.parquet, main_run.parquet and paired_snr.md (default: "
                        "<kdray cache>/reward_snr)")
    p.set_defaults(func=_cmd_reward_snr)
