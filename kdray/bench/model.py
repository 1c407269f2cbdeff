"""The step-time rows of one model setting: the cache, every step configuration, FLOPs, train.compile, selector.

All step configurations are timed with :func:`kdray.perf.timing.interleaved` (one repeat of each per
round, the order reversed every round), and the checked ratios carry the quartiles of their per-round
ratios (:func:`kdray.perf.timing.paired_ratio`), from which ``kdray.bench.rows.check`` sizes the margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdray.bench.rows import ALL_KINDS, CACHED_KINDS, Row, Sizes, check
from kdray.bench.selector import selector_rows
from kdray.bench.setup import BenchModels, BenchSetup
from kdray.perf.flops import GemmPeak, step_efficiency
from kdray.perf.timing import Timing, clock, interleaved, paired_ratio
from kdray.step import distill_step, teacher_source
from kdray.training import Autocast, autocast_for, bf16_is_slow_here

Log = Callable[[str], None]


def step_configs(s: BenchSetup) -> dict[str, tuple[BenchModels, list[str], bool, str]]:
    """(models, kinds selected, cached?, note) per configuration; the kernel is the one distill.train loads."""
    return {
        "plain": (s.sdpa, ["finetune"], False, "finetune only, no teacher forward (SDPA: pool without attention)"),
        "plain_eager": (s.eager, ["finetune"], False, "finetune only, eager attention (a pool with attention)"),
        "plain_cls_top": (s.sdpa, ["finetune"], False,
                          "finetune only as kdray runs it: the top layer computes its [CLS] row only (kdray.top_layer)"),
        "all_live": (s.eager, ALL_KINDS, False, "all 6 kinds, live teacher (eager attention)"),
        "cached5": (s.sdpa, CACHED_KINDS, True, "finetune, response, feature, relation, embedding from the cache (SDPA)"),
        "all_cached": (s.eager, ALL_KINDS, True, "all 6 kinds from the cache, attention maps included (eager)"),
        "ft_resp_live": (s.eager, ["finetune", "response"], False,
                         "finetune + response selected from the all-kinds pool, live teacher (eager)"),
        "vanilla_kd_live": (s.sdpa, ["finetune", "response"], False, "pool = finetune + response, live teacher (SDPA)"),
        "vanilla_kd_cached": (s.sdpa, ["finetune", "response"], True, "pool = finetune + response, from the cache"),
        "cached4_no_relation": (s.sdpa, ["finetune", "response", "feature", "embedding"], True,
                                "cached kinds without relation (what relation costs beside the other cached kinds)"),
    }


#: configurations that run the student's full forward: the reference every ratio is read against (a plain
#: transformers step), not kdray's finetune-only step, whose top layer computes its [CLS] row only
FULL_FORWARD = frozenset({"plain", "plain_eager"})


class Stepper:
    """Runs one training step of a configuration on the setup's next batch (what every timed case calls)."""

    def __init__(self, s: BenchSetup, cache: Any) -> None:
        self.s = s
        self.cache = cache
        self.sources = {id(m): (teacher_source(m.teacher, None, s.device, s.autocast),
                                teacher_source(m.teacher, cache, s.device, s.autocast))
                        for m in (s.eager, s.sdpa)}

    def case(self, m: BenchModels, kinds: list[str], cached: bool, forward: torch.nn.Module | None = None,
             autocast: Autocast | None = None, cls_top: bool = True) -> Callable[[], Any]:
        """A closure that runs one step (``forward`` replaces the student's forward, e.g. a compiled one;
        ``autocast`` replaces the run's precision, e.g. ``train.precision: bf16``, teacher forward included;
        ``cls_top=False``: the student's full top layer, see :data:`FULL_FORWARD`)."""
        weights = {k: 1.0 for k in kinds}
        s = self.s
        fn = self.sources[id(m)][int(cached)]
        if autocast is not None:
            fn = teacher_source(m.teacher, self.cache if cached else None, s.device, autocast)
        amp = autocast or s.autocast

        model = m.student if forward is None else forward  # not `or`: a compiled module has no truth value

        def run() -> Any:
            batch, rows = s.next_batch()
            return distill_step(model, m.student, m.knowledge, m.pool, weights, batch, rows, fn,
                                m.optimizer, m.scheduler, s.scaler, 1.0, autocast=amp, cls_top=cls_top)
        return run


def cache_rows(s: BenchSetup) -> tuple[Any, list[Row]]:
    """Build the teacher-output cache; rows: build time and size per 1,000 examples."""
    sizes, t, m = s.sizes, s.sizes.seq_len, s.sizes.model
    cache, build_s, nbytes, layers = s.build_cache()
    attention = sum(a.nbytes for a in cache.attention.values())
    per_k = 1000 / sizes.cache_rows
    return cache, [
        Row("cache", "build_per_1k", m, 128, t, build_s * per_k, build_s * per_k, "s/1k examples", repeats=1,
            note=f"{sizes.cache_rows} rows of {t} tokens, teacher hidden layers {layers} + logits + attention maps, "
                 "fp16 (eager teacher)"),
        Row("cache", "size_per_1k", m, 0, t, math.nan, nbytes * per_k / 2**20, "MiB/1k examples", repeats=1,
            note=f"unpadded fp16; {t} real tokens per row; of which attention maps of layers "
                 f"{sorted(cache.attention_layers)} {attention * per_k / 2**20:.0f} MiB"),
    ]


def with_ratio_spread(row: Row, paired: Timing, key: str | None = None) -> Row:
    """Attach the quartiles of the per-round ratios (``paired_ratio``; what the margin is sized from) and, given a
    target ``key``, judge the row on their median. The rounds are interleaved, so a round's two cases ran seconds
    apart under the same load; a ratio of the two medians can pair a quiet round of one with a loaded round of the
    other (CI failed 1.053 against 1.05 that way with 4 rounds)."""
    row.ratio_q25, row.ratio_q75 = paired.q25, paired.q75
    return row if key is None else check(row, key, paired.median)


def step_rows(s: BenchSetup, stepper: Stepper) -> tuple[list[Row], dict[str, list[float]]]:
    """Every configuration of :func:`step_configs`, interleaved; the checked ratios with their spreads."""
    sizes = s.sizes
    b, t, name_m = sizes.batch, sizes.seq_len, sizes.model
    configs = step_configs(s)
    times = interleaved({k: stepper.case(m, kinds, cached, cls_top=k not in FULL_FORWARD)
                         for k, (m, kinds, cached, _) in configs.items()},
                        sizes.repeats, sizes.warmup)
    timing = {k: Timing.of(v) for k, v in times.items()}
    plain = timing["plain"].median
    rows = []
    for name, (_, _, _, note) in configs.items():
        tm = timing[name]
        row = Row("step", name, name_m, b, t, tm.median, tm.median * 1000, "ms/step", tm.median / plain,
                  repeats=tm.repeats, note=note, spread=tm.spread)
        if name == "cached5":
            with_ratio_spread(row, paired_ratio(times["cached5"], times["plain"]), "cached_vs_plain")
        rows.append(row)
    ft_s, all_s = (timing[k].median for k in ("ft_resp_live", "all_live"))
    rows.append(with_ratio_spread(
        Row("step", "ft_resp_vs_all_live", name_m, b, t, ft_s, ft_s / all_s, "x", ft_s / plain, repeats=sizes.repeats,
            note="value = ft_resp_live / all_live: what skipping the 4 unselected kinds saves inside one run (same "
                 "models); how much depends on what those kinds cost at this shape"),
        paired_ratio(times["ft_resp_live"], times["all_live"])))
    unselected = paired_ratio(times["ft_resp_live"], times["vanilla_kd_live"])
    rows.append(with_ratio_spread(Row(
        "step", "unselected_kinds_overhead", name_m, b, t, ft_s, unselected.median, "x", ft_s / plain,
        repeats=sizes.repeats, note="value = ft_resp_live / vanilla_kd_live, the median of the per-round ratios: "
        "finetune + response selected from the 6-kind pool against a pool of just those two: what unselected kinds "
        "still cost"), unselected, "unselected_kinds_overhead"))
    return rows, times


def flop_rows(s: BenchSetup, stepper: Stepper, plain: Timing, peak: GemmPeak) -> list[Row]:
    """The plain step's FLOPs (counted) and its achieved FLOP/s as a share of the measured GEMM peak."""
    eff = step_efficiency(stepper.case(*step_configs(s)["plain"][:3], cls_top=False), plain.median, peak)
    sz = s.sizes
    return [Row("flops", "plain_step_vs_gemm_peak", sz.model, sz.batch, sz.seq_len, plain.median, eff.fraction,
                "x GEMM peak", repeats=plain.repeats, spread=plain.spread,
                note=f"{eff.flops / 1e9:.1f} GFLOP/step (FlopCounterMode, fwd+bwd) at {eff.flops_per_second / 1e9:.1f} "
                     f"GFLOP/s; peak {peak.best / 1e9:.1f} GFLOP/s ({peak.dtype} {peak.size}^2 matmul, same run)")]


def compile_rows(s: BenchSetup, stepper: Stepper, plain_s: float, log: Log) -> list[Row]:
    """The plain step with the student's forward under torch.compile (``train.compile``) against eager, interleaved."""
    sz = s.sizes
    m, kinds, cached, _ = step_configs(s)["plain"]
    compiled = torch.compile(m.student)  # what run_setup does when train.compile is on
    start = clock()
    stepper.case(m, kinds, cached, compiled)()  # the first step compiles (the cost every run pays once per shape)
    compile_s = clock() - start
    # eager runs the full forward too: a compiled module runs its own (kdray.top_layer does not apply to it)
    times = interleaved({"eager": stepper.case(m, kinds, cached, cls_top=False),
                         "compiled": stepper.case(m, kinds, cached, compiled)},
                        sz.repeats, sz.warmup)
    eager, comp = Timing.of(times["eager"]), Timing.of(times["compiled"])
    paired = paired_ratio(times["compiled"], times["eager"])
    log(f"  train.compile: {comp.median * 1000:.0f} ms vs eager {eager.median * 1000:.0f} ms (first step {compile_s:.0f} s)")
    return [Row("step", "plain_compiled", sz.model, sz.batch, sz.seq_len, comp.median, comp.median / eager.median,
                "x eager", comp.median / plain_s, repeats=comp.repeats, spread=comp.spread,
                ratio_q25=paired.q25, ratio_q75=paired.q75,
                note=f"train.compile: torch.compile(student) forward, plain step; value = compiled / eager "
                     f"(interleaved; eager {eager.median * 1000:.0f} ms); first compiled step {compile_s:.1f} s")]


def precision_rows(s: BenchSetup, stepper: Stepper, plain_s: float, log: Log) -> list[Row]:
    """``train.precision: bf16`` on a CPU (autocast, teacher forward included) against fp32, interleaved:
    the plain step and vanilla KD with a live teacher. None on a GPU, where the steps already run in bf16."""
    if s.device.type != "cpu":
        return []
    if bf16_is_slow_here(s.device):  # one MiniLM bf16 step would take minutes on torch's fallback
        log(f"  train.precision bf16: skipped, this CPU ({torch.backends.cpu.get_cpu_capability()}) has no oneDNN "
            "bf16 path (kdray.training.bf16_is_slow_here)")
        return []
    sz, bf16 = s.sizes, autocast_for(s.device, torch.bfloat16)
    configs = step_configs(s)
    cases: dict[str, Callable[[], Any]] = {}
    for name in ("plain", "vanilla_kd_live"):
        m, kinds, cached, _ = configs[name]
        cases[name], cases[f"{name}_bf16"] = stepper.case(m, kinds, cached), stepper.case(m, kinds, cached, autocast=bf16)
    times = interleaved(cases, sz.repeats, sz.warmup)
    rows = []
    for name in ("plain", "vanilla_kd_live"):
        fp32, low = Timing.of(times[name]), Timing.of(times[f"{name}_bf16"])
        paired = paired_ratio(times[f"{name}_bf16"], times[name])
        log(f"  train.precision bf16: {name} {low.median * 1000:.0f} ms vs fp32 {fp32.median * 1000:.0f} ms")
        rows.append(Row("step", f"{name}_bf16", sz.model, sz.batch, sz.seq_len, low.median, low.median / fp32.median,
                        "x fp32", low.median / plain_s, repeats=low.repeats, spread=low.spread,
                        ratio_q25=paired.q25, ratio_q75=paired.q75,
                        note=f"train.precision: bf16 (CPU autocast; a live teacher's forward too); value = bf16 / fp32 "
                             f"{name} step (interleaved; fp32 {fp32.median * 1000:.0f} ms)"))
    return rows


def bench_model(sizes: Sizes, work: Path, log: Log, device: torch.device, peak: GemmPeak | None) -> list[Row]:
    """All rows of one model setting (cache, steps, FLOPs, compile, selector)."""
    s = BenchSetup(sizes, work, device)
    cache, rows_out = cache_rows(s)
    log(f"  cache: {rows_out[0].value:.1f} s and {rows_out[1].value:.1f} MiB per 1k examples")
    stepper = Stepper(s, cache)
    rows, times = step_rows(s, stepper)
    rows_out += rows
    log("  steps (ms): " + ", ".join(f"{r.name}={r.value:.0f}" for r in rows if r.unit == "ms/step"))
    plain = Timing.of(times["plain"])
    if peak is not None:
        rows_out += flop_rows(s, stepper, plain, peak)
        log(f"  plain step at {rows_out[-1].value:.1%} of the GEMM peak")
    if sizes.compile:
        rows_out += compile_rows(s, stepper, plain.median, log)
        rows_out += precision_rows(s, stepper, plain.median, log)
    rows_out += selector_rows(s, stepper.sources[id(s.sdpa)][0], plain.median, log)
    return rows_out
