"""How close a step gets to the machine's own limit: FLOPs counted, dense-GEMM FLOP/s measured.

A step's FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and
attention kernels, forward and backward: what dominates a transformer step). The machine's limit
is measured in the same process rather than taken from a data sheet: a large dense matmul, fp32
on a CPU and bf16 on a GPU (the precision the loop's steps run in there). The achieved fraction is
then ``flops / seconds / peak``; on a shared machine both numbers see the same load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdray.perf.timing import Timing, clock


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (a multiply-add counts 2), backward included when ``fn`` runs it."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class GemmPeak:
    """The machine's dense matmul rate: ``best`` FLOP/s (what the limit is), ``median`` over repeats."""

    best: float
    median: float
    size: int
    dtype: str
    device: str


def gemm_peak(
    device: torch.device | str = "cpu", size: int | None = None, dtype: torch.dtype | None = None, repeats: int = 5,
) -> GemmPeak:
    """Measure dense GEMM FLOP/s with ``size × size`` matrices (fp32, 2048 on CPU; bf16, 8192 on CUDA by default)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    n = size or (8192 if cuda else 2048)
    dt = dtype or (torch.bfloat16 if cuda else torch.float32)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, dt)
    b = torch.randn(n, n, generator=g).to(dev, dt)
    out = torch.empty(n, n, device=dev, dtype=dt)
    torch.mm(a, b, out=out)  # warm-up: thread pools, kernel selection
    seconds = []
    for _ in range(repeats):
        t0 = clock()
        torch.mm(a, b, out=out)
        seconds.append(clock() - t0)
    flops = 2.0 * n**3
    return GemmPeak(flops / min(seconds), flops / Timing.of(seconds).median, n, str(dt).replace("torch.", ""), str(dev))


def achieved_fraction(flops: float, seconds: float, peak_flops_per_second: float) -> float:
    """Achieved FLOP/s as a share of the peak (NaN when undefined; above 1 only if the peak was measured under more load)."""
    if seconds <= 0 or peak_flops_per_second <= 0 or not math.isfinite(seconds):
        return math.nan
    return flops / seconds / peak_flops_per_second


@dataclass(frozen=True)
class StepEfficiency:
    """One step's FLOPs, its median time, and what share of the machine's GEMM rate that is."""

    flops: int
    seconds: float
    flops_per_second: float
    fraction: float
    peak: GemmPeak


def step_efficiency(step: Callable[[], object], seconds: float, peak: GemmPeak) -> StepEfficiency:
    """Count ``step``'s FLOPs (one extra call) and relate its measured median ``seconds`` to ``peak``."""
    flops = count_flops(step)
    rate = flops / seconds if seconds > 0 else math.nan
    return StepEfficiency(flops, seconds, rate, achieved_fraction(flops, seconds, peak.best), peak)
