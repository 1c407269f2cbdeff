"""kdray.perf.flops: FLOP counts that match the arithmetic, a measured GEMM rate, a fraction of it."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdray.perf.flops import achieved_fraction, count_flops, gemm_peak, step_efficiency
from kdray.perf.timing import Timing, interleaved


def test_linear_flops_are_two_m_n_k_forward_and_three_times_that_with_backward() -> None:
    m, k, n = 8, 32, 16
    layer = nn.Linear(k, n)
    x = torch.randn(m, k)
    assert count_flops(lambda: layer(x)) == 2 * m * n * k
    x.requires_grad_()
    # backward: input gradient and weight gradient, one m·n·k product each
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * m * n * k


def test_gemm_peak_is_a_positive_rate_and_best_is_at_least_the_median() -> None:
    peak = gemm_peak("cpu", size=256, repeats=3)
    assert peak.dtype == "float32" and peak.size == 256 and peak.device == "cpu"
    assert math.isfinite(peak.best) and peak.best > 0
    assert peak.best >= peak.median > 0


def test_a_tiny_training_step_reaches_a_fraction_of_the_peak_in_0_1() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 64), torch.randint(0, 2, (16,))

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = Timing.of(interleaved({"step": step}, repeats=5)["step"]).median
    eff = step_efficiency(step, seconds, gemm_peak("cpu", size=512, repeats=3))
    # forward 2·16·(64·64 + 64·2), backward twice that (the input of the first layer needs no gradient: 2·16·64·64 less)
    assert eff.flops == 3 * 2 * 16 * (64 * 64 + 64 * 2) - 2 * 16 * 64 * 64
    assert 0.0 < eff.fraction <= 1.0


def test_achieved_fraction_is_nan_when_undefined() -> None:
    assert achieved_fraction(1e9, 0.5, 4e9) == 0.5
    assert math.isnan(achieved_fraction(1e9, 0.0, 4e9))
    assert math.isnan(achieved_fraction(1e9, 1.0, 0.0))
