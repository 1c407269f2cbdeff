"""Interleaved wall-clock timing: one repeat of every case per round, so background load hits all alike.

The machines kdray is benchmarked on are often shared; a median per case over rounds in which
every case ran once (in alternating order) keeps slow periods from landing on one side only, and
ratios of per-round pairs cancel what load remains. Each summary carries its spread, so a ratio
can be read against the noise it was measured under.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch


def clock() -> float:
    """Wall time after the GPU's queued work is done (CUDA kernels run asynchronously)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (NaN for an empty list)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one case: median and interquartile range over ``repeats`` rounds."""

    median: float
    q25: float
    q75: float
    repeats: int

    @classmethod
    def of(cls, xs: list[float]) -> "Timing":
        return cls(float(statistics.median(xs)) if xs else math.nan, quantile(xs, 0.25), quantile(xs, 0.75), len(xs))

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.1 = the middle half lies within 10%)."""
        return (self.q75 - self.q25) / self.median if self.median else math.nan


def interleaved(cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call of each case; every round runs every case once, the order reversed each round."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            t0 = clock()
            cases[name]()
            times[name].append(clock() - t0)
    return times


def paired_ratio(a: list[float], b: list[float]) -> Timing:
    """Distribution of per-round ratios a[i] / b[i] (``Timing`` fields hold ratios, not seconds)."""
    return Timing.of([x / y for x, y in zip(a, b) if y > 0])
