"""kdray against the KD toolkits users know, on the same models and batches, in the same process.

``compare(shape, pair)`` times one optimisation step of kdray and of TextBrewer's
GeneralDistiller (``kdray.perf.sides``), interleaved A B, B A, ... so load on a shared machine
hits both alike, and reports medians, spreads and the ratio kdray / TextBrewer (below 1: kdray
is faster). Both sides also run one step on the first batch before and after the timed rounds,
so a row shows that each side trained (its loss on that batch moved).

``python -m kdray.perf.peers --shapes minilm`` prints the table (``tiny``, ``minilm``,
``bert-base``; ``--flops`` adds each step's FLOPs and its share of the machine's GEMM rate).

torchdistill is not run: :data:`TORCHDISTILL_SKIP` says why, and a bench row prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from kdray.perf.flops import GemmPeak, count_flops, gemm_peak
from kdray.perf.pair import SHAPES, Shape, build_pair, synthetic_batches
from kdray.perf.sides import PAIRS, KdraySide, PeerPair, TextBrewerSide, textbrewer_missing
from kdray.perf.timing import Timing, interleaved, paired_ratio

TORCHDISTILL_SKIP = (
    "torchdistill 1.1.5 not run: it imports torchvision at module level (core.forward_hook, losses.mid_level) and "
    "requires torchvision>=0.27, whose PyPI builds do not load beside this environment's torch 2.13.0+cpu "
    "(torchvision 0.28.0 fails at import: operator torchvision::nms does not exist); a second environment "
    "(torch 2.14.1 + torchvision 0.29.1, a 5.5 GB CUDA build, plus transformers) was judged too costly here"
)


@dataclass(frozen=True)
class PeerRow:
    """One pair at one shape: per-step timings of both sides and their ratio.

    Attributes:
        ratio: kdray median / TextBrewer median (below 1: kdray is faster).
        paired: distribution of per-round ratios (the spread the ratio was measured with).
        *_losses: each side's loss on the first batch at its first step and after the timed rounds.
        *_flops / *_fraction: FLOPs of one step and achieved share of ``peak`` (NaN unless asked for).
    """

    shape: str
    pair: str
    description: str
    batch: int
    seq_len: int
    kdray: Timing
    peer: Timing
    ratio: float
    paired: Timing
    kdray_losses: tuple[float, float]
    peer_losses: tuple[float, float]
    kdray_flops: float = math.nan
    peer_flops: float = math.nan
    kdray_fraction: float = math.nan
    peer_fraction: float = math.nan
    peer_name: str = "textbrewer"
    cache_build_s: float = math.nan  # kdray's teacher-output cache build per batch (pairs that read the cache)


def step_autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA (what the loop uses there), none on CPU; the same for both sides."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def compare(
    shape: Shape, spec: PeerPair, repeats: int = 5, warmup: int = 1, device: torch.device | str = "cpu",
    peak: GemmPeak | None = None,
) -> PeerRow:
    """Time one step of kdray and of TextBrewer on ``spec`` at ``shape``, interleaved (see the module docstring)."""
    reason = textbrewer_missing()
    if reason:
        raise RuntimeError(reason)
    dev = torch.device(device)
    autocast = step_autocast(dev)
    pair = build_pair(shape, spec.eager, sides=2, device=dev)
    batches = synthetic_batches(shape, max(2, min(repeats + warmup + 1, 8)), dev)
    sides = {"kdray": KdraySide(pair, pair.students[0], spec, dev, autocast),
             "textbrewer": TextBrewerSide(pair, pair.students[1], spec, dev, autocast)}
    build_s = math.nan
    cache_dir = tempfile.TemporaryDirectory(prefix="kdray-peers-cache-") if spec.kdray_cached else None
    try:
        if cache_dir is not None:
            build_s = sides["kdray"].cache(batches, str(Path(cache_dir.name) / "teacher_outputs"))
        first = {name: side.step(batches[0]).item() for name, side in sides.items()}
        position = {"i": 0}

        def runner(side: Any) -> Any:
            def run() -> None:  # both sides see batch k in round k (a side's call advances nothing)
                side.step(batches[1 + position["i"] // 2 % (len(batches) - 1)])
                position["i"] += 1
            return run

        times = interleaved({name: runner(side) for name, side in sides.items()}, repeats, warmup)
        last = {name: side.step(batches[0]).item() for name, side in sides.items()}
        flops = {name: math.nan for name in sides}
        if peak is not None:
            flops = {name: float(count_flops(lambda: side.step(batches[0]))) for name, side in sides.items()}
    finally:
        sides["textbrewer"].close()
        if cache_dir is not None:
            cache_dir.cleanup()
    k, p = Timing.of(times["kdray"]), Timing.of(times["textbrewer"])

    def fraction(name: str, t: Timing) -> float:
        return flops[name] / t.median / peak.best if peak is not None else math.nan

    return PeerRow(shape.name, spec.name, spec.description, shape.batch, shape.seq_len, k, p, k.median / p.median,
                   paired_ratio(times["kdray"], times["textbrewer"]), (first["kdray"], last["kdray"]),
                   (first["textbrewer"], last["textbrewer"]), flops["kdray"], flops["textbrewer"],
                   fraction("kdray", k), fraction("textbrewer", p), cache_build_s=build_s / len(batches))


def format_table(rows: Sequence[PeerRow], peak: GemmPeak | None = None) -> str:
    """Markdown table of peer rows (plus the skipped peers and the GEMM peak when measured)."""
    lines = ["| shape | pair | kdray ms (IQR) | textbrewer ms (IQR) | ratio kdray/peer | per-round ratio [q25, q75] |"
             " kdray FLOP share | peer FLOP share |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.shape} ({r.batch}x{r.seq_len}) | {r.pair} | {r.kdray.median * 1e3:.0f} (±{r.kdray.spread / 2:.0%}) "
            f"| {r.peer.median * 1e3:.0f} (±{r.peer.spread / 2:.0%}) | {r.ratio:.2f} "
            f"| {r.paired.median:.2f} [{r.paired.q25:.2f}, {r.paired.q75:.2f}] "
            f"| {_pct(r.kdray_fraction)} | {_pct(r.peer_fraction)} |")
    lines.append(f"| - | torchdistill | skipped | | | | | |\n\n{TORCHDISTILL_SKIP}.")
    for r in rows:
        if math.isfinite(r.cache_build_s):
            lines.append(f"{r.pair}: kdray's teacher-output cache took {r.cache_build_s * 1e3:.0f} ms per batch to build "
                         f"(one teacher pass over the rows, before the timed rounds; a training run builds it once "
                         f"and reuses it every epoch and every trial on the same rows).")
    if peak is not None:
        lines.append(f"GEMM peak: {peak.best / 1e9:.1f} GFLOP/s ({peak.dtype} {peak.size}x{peak.size} on {peak.device}; "
                     f"median {peak.median / 1e9:.1f}).")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1%}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kdray.perf.peers``: print the peer table for the chosen shapes."""
    ap = argparse.ArgumentParser(prog="python -m kdray.perf.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["minilm"], choices=sorted(SHAPES))
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per pair (one step of each side per round)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--flops", action="store_true", help="count each step's FLOPs and compare with a measured GEMM peak")
    args = ap.parse_args(argv)
    reason = textbrewer_missing()
    if reason:
        print(f"peers skipped: {reason}\n{TORCHDISTILL_SKIP}.")
        return 0
    peak = gemm_peak(args.device) if args.flops else None
    rows = []
    for name in args.shapes:
        for pair in args.pairs:
            rows.append(compare(SHAPES[name], PAIRS[pair], args.repeats, args.warmup, args.device, peak))
            print(f"  done: {name} {pair} ratio {rows[-1].ratio:.2f}", flush=True)
    print(format_table(rows, peak))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
