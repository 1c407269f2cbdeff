"""kdray.perf.timing, relation_cost and optimizer_cost: interleaving order, summaries, both relation paths and both
AdamW kernels timed."""

from __future__ import annotations

import math

import pytest
import torch

from kdray.perf.optimizer_cost import main as optimizer_cost_main
from kdray.perf.optimizer_cost import time_optimizers
from kdray.perf.relation_cost import time_relation
from kdray.perf.timing import Timing, interleaved, paired_ratio, quantile


def test_interleaved_runs_every_case_once_per_round_alternating_order() -> None:
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B, B A, A B
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_timing_summary_and_paired_ratio() -> None:
    t = Timing.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (t.median, t.q25, t.q75, t.repeats) == (3.0, 2.0, 4.0, 5)
    assert t.spread == pytest.approx(2.0 / 3.0)
    assert paired_ratio([2.0, 3.0, 8.0], [1.0, 3.0, 2.0]).median == 2.0
    assert math.isnan(quantile([], 0.5)) and math.isnan(Timing.of([]).median)


def test_relation_cost_times_both_paths_and_reports_the_auto_choice() -> None:
    wide = time_relation(2, 8, 64, 3, repeats=2, warmup=0)
    narrow = time_relation(2, 64, 8, 3, repeats=2, warmup=0)
    assert wide.gram_chosen and not narrow.gram_chosen
    for r in (wide, narrow):
        assert r.direct.median > 0 and r.gram.median > 0 and math.isfinite(r.speedup.median)
        # the teacher-only term: one [B, T, H] x [B, H, T] product per chain layer, 2*B*T*T*H FLOPs each
        assert r.teacher_term_flops == r.chain_layers * 2 * r.batch * r.seq_len**2 * r.width
        assert r.gram_flops > 2 * r.teacher_term_flops


def test_optimizer_cost_times_both_adamw_kernels_on_the_same_student(capsys: pytest.CaptureFixture[str]) -> None:
    """Both sides step the same tiny student (2.1 M parameters) on the same batches; the optimiser-only timings
    are part of the step timings, and the command prints one table row per shape and thread count."""
    r = time_optimizers("tiny", repeats=2, warmup=0)
    assert r.params > 2_000_000 and r.threads >= 1
    assert 0 < r.adamw_fused.median < r.step_fused.median and 0 < r.adamw_per_tensor.median < r.step_per_tensor.median
    assert math.isfinite(r.speedup.median) and r.speedup.repeats == 2
    threads = torch.get_num_threads()
    assert optimizer_cost_main(["--shapes", "tiny", "--threads", "1", "--repeats", "1"]) == 0
    assert torch.get_num_threads() == threads  # the process's setting is restored
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 1 and rows[0].count("|") == 8
