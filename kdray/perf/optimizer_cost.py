"""What the student's AdamW step costs, fused and per tensor, inside a whole training step.

torch picks its per-tensor AdamW on CPU unless asked for another; :func:`kdray.training.adamw` asks for the
fused kernel where torch has one. This times one plain student step (forward, backward, clip, AdamW) with
each optimiser on identical student copies and batches, interleaved, so the share the optimiser takes of a
step, and what fusing saves, are ratios measured in one run.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from kdray.perf.pair import SHAPES, build_pair, synthetic_batches
from kdray.perf.timing import Timing, interleaved, paired_ratio
from kdray.training import adamw, param_groups


@dataclass(frozen=True)
class OptimizerCost:
    """Seconds per plain step with each AdamW, and the optimiser step alone; ``speedup`` = per tensor / fused."""

    shape: str
    seq_len: int
    params: int
    threads: int
    step_per_tensor: Timing
    step_fused: Timing
    speedup: Timing
    adamw_per_tensor: Timing
    adamw_fused: Timing


def time_optimizers(shape_name: str, repeats: int = 5, warmup: int = 1, seq_len: int | None = None) -> OptimizerCost:
    """Plain student steps with per-tensor and fused AdamW at ``shape_name`` (a :data:`kdray.perf.pair.SHAPES` key),
    its batches ``seq_len`` tokens long where given (a bucketed GLUE batch is often far shorter than 128)."""
    shape = SHAPES[shape_name]
    if seq_len is not None:
        shape = dataclasses.replace(shape, seq_len=seq_len)
    pair = build_pair(shape, eager=False, sides=1)
    batches = synthetic_batches(shape, 2)
    students = {"per_tensor": pair.students[0], "fused": copy.deepcopy(pair.students[0])}
    optimizers = {"per_tensor": torch.optim.AdamW(param_groups([students["per_tensor"]], 0.01), lr=5e-5),
                  "fused": adamw([students["fused"]], 5e-5, 0.01)}  # the loop's own optimiser
    calls = {name: 0 for name in students}

    def step(name: str) -> None:
        model, opt = students[name], optimizers[name]
        model(**batches[calls[name] % len(batches)]).loss.backward()
        calls[name] += 1
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)  # as the loop does

    steps = interleaved({name: (lambda n=name: step(n)) for name in students}, repeats, warmup)
    for model in students.values():  # gradients for the optimiser-only timing, which steps on them repeatedly
        model(**batches[0]).loss.backward()
    alone = interleaved({name: optimizers[name].step for name in students}, repeats, warmup)
    params = sum(p.numel() for p in students["fused"].parameters())
    return OptimizerCost(shape_name, shape.seq_len, params, torch.get_num_threads(),
                         Timing.of(steps["per_tensor"]), Timing.of(steps["fused"]),
                         paired_ratio(steps["per_tensor"], steps["fused"]),
                         Timing.of(alone["per_tensor"]), Timing.of(alone["fused"]))


def main(argv: list[str] | None = None) -> int:
    """``python -m kdray.perf.optimizer_cost [--shapes minilm bert-base] [--seq-len 128] [--threads 1 2]
    [--repeats N]``: one table row per shape, length and thread count."""
    import argparse
    import itertools

    ap = argparse.ArgumentParser(prog="python -m kdray.perf.optimizer_cost", description=main.__doc__)
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["minilm", "bert-base"])
    ap.add_argument("--seq-len", nargs="+", type=int, default=None, help="tokens per row (default: the shape's)")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print("| shape (batch x tokens) | student params | threads | plain step, per-tensor AdamW ms | plain step, fused "
          "AdamW ms | step speed-up [q25, q75] | AdamW alone: per tensor / fused ms |")
    print("|---|---|---|---|---|---|---|")
    before = torch.get_num_threads()
    try:
        for name, seq_len, threads in itertools.product(args.shapes, args.seq_len or [None], args.threads):
            torch.set_num_threads(threads)
            r = time_optimizers(name, args.repeats, seq_len=seq_len)
            print(f"| {name} ({SHAPES[name].batch} x {r.seq_len}) | {r.params / 1e6:.1f} M | {threads} "
                  f"| {r.step_per_tensor.median * 1e3:.0f} | {r.step_fused.median * 1e3:.0f} "
                  f"| {r.speedup.median:.2f} [{r.speedup.q25:.2f}, {r.speedup.q75:.2f}] "
                  f"| {r.adamw_per_tensor.median * 1e3:.0f} / {r.adamw_fused.median * 1e3:.0f} |", flush=True)
    finally:
        torch.set_num_threads(before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
