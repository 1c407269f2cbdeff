"""``kdray bench --peers``: kdray's step against TextBrewer's on the same models and batches, same process.

The pairs and both sides are :mod:`kdray.perf.sides`; :func:`kdray.perf.peers.compare` times them
interleaved (A B, B A, ...). Each row's value is kdray / TextBrewer (below 1: kdray is faster), checked
against the issue #18 targets with the margin rule of :mod:`kdray.bench.rows` (the per-round ratios'
quartiles are the spread). When TextBrewer is not importable, one row says why; so does a pair whose kdray
teacher runs in a precision with no fast path here (bf16 without oneDNN bf16, int8 off the CPU); torchdistill
is never run here and its row says why (:data:`kdray.perf.peers.TORCHDISTILL_SKIP`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from kdray.bench.rows import Row, check
from kdray.perf.flops import GemmPeak
from kdray.perf.pair import SHAPES, Shape
from kdray.perf.peers import TORCHDISTILL_SKIP, compare
from kdray.perf.sides import PAIRS, PeerPair, textbrewer_missing
from kdray.teacher_precision import int8_unavailable
from kdray.training import bf16_is_slow_here

# the shape each bench scale compares at (random-init teacher and student of the named sizes)
PEER_SHAPES: dict[str, Shape] = {
    "quick": dataclasses.replace(SHAPES["minilm"], seq_len=32),
    "full": SHAPES["minilm"],
    "paper": SHAPES["bert-base"],
}


def _pct(x: float) -> str:
    return f"{x:.0%}" if math.isfinite(x) else "n/a"


def _cache_note(build_s: float) -> str:
    if not math.isfinite(build_s):
        return ""
    return f"; kdray's cache build {build_s * 1e3:.0f} ms per batch, once per training set (not in the step)"


def _precision_skip(spec: PeerPair, device: torch.device) -> str | None:
    """Why a pair whose kdray teacher runs in another precision cannot be timed fairly here (None: it can)."""
    if spec.kdray_teacher_precision == "bf16" and bf16_is_slow_here(device):
        return (f"skipped: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no oneDNN bf16 path, so the "
                "bf16 teacher would time torch's slow fallback, not kdray (kdray.training.bf16_is_slow_here)")
    if spec.kdray_teacher_precision == "int8" and device.type != "cpu":
        return "skipped: train.teacher_precision int8 runs on CPUs only (torch's dynamic int8 quantization)"
    if spec.kdray_teacher_precision == "int8" and int8_unavailable():
        return f"skipped: {int8_unavailable()}"
    return None


def peer_rows(scale: str, repeats: int, warmup: int, device: torch.device, peak: GemmPeak | None,
              log: Callable[[str], None]) -> list[Row]:
    """One row per pair of :data:`kdray.perf.sides.PAIRS` (or a skipped row), plus torchdistill's skipped row."""
    shape = PEER_SHAPES[scale]
    model = f"{shape.name}[{shape.student_layers}/{shape.teacher_layers}] random"
    rows: list[Row] = []
    reason = textbrewer_missing()
    if reason:
        log(f"  peers: textbrewer skipped: {reason}")
        rows.append(Row("peers", "textbrewer_skipped", model, shape.batch, shape.seq_len, note=reason))
    for name, spec in ({} if reason else PAIRS).items():
        why = _precision_skip(spec, device)
        if why:
            log(f"  peers {name}: {why}")
            rows.append(Row("peers", f"{name}_skipped", model, shape.batch, shape.seq_len, note=why))
            continue
        r = compare(shape, spec, repeats, warmup, device, peak)
        row = Row("peers", name, model, shape.batch, shape.seq_len, r.kdray.median, r.ratio, "x textbrewer", r.ratio,
                  repeats=r.kdray.repeats, spread=r.kdray.spread, ratio_q25=r.paired.q25, ratio_q75=r.paired.q75,
                  note=f"{spec.description}; kdray {r.kdray.median * 1e3:.0f} ms vs textbrewer {r.peer.median * 1e3:.0f} ms "
                       f"(±{r.peer.spread / 2:.0%}); loss on batch 0 kdray {r.kdray_losses[0]:.3f}->{r.kdray_losses[1]:.3f}, "
                       f"textbrewer {r.peer_losses[0]:.3f}->{r.peer_losses[1]:.3f}; GEMM-peak share kdray "
                       f"{_pct(r.kdray_fraction)}, textbrewer {_pct(r.peer_fraction)}" + _cache_note(r.cache_build_s))
        rows.append(check(row, f"peer_{name}", r.ratio))
        log(f"  peers {name}: kdray/textbrewer = {r.ratio:.2f} [{r.paired.q25:.2f}, {r.paired.q75:.2f}]")
    rows.append(Row("peers", "torchdistill_skipped", model, shape.batch, shape.seq_len, note=TORCHDISTILL_SKIP))
    return rows
