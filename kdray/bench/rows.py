"""The bench's measured rows, what a model setting is timed at, the targets and how a miss is judged.

Margins (the rule ``check`` applies):

- every target has a fixed margin (``TARGETS``): ``limit = target * (1 + margin)`` (``rel``) or
  ``target + margin`` (``abs``); it covers the run-to-run drift of a median on a shared 2-core machine;
- a ratio measured from interleaved rounds (``kdray.perf.timing.interleaved``) also carries the spread of
  its per-round ratios; its margin is then sized from that spread: ``noise_limit = target + (q75 - q25)``
  of the per-round ratios (twice the half-IQR: a miss this small is within what the same run's rounds
  disagree by);
- status: ``pass`` when value <= target; ``miss`` when value <= max(limit, noise_limit); ``FAIL`` beyond
  both (``kdray bench --quick`` exits 1 on a FAIL). A row without a spread is judged on ``limit`` alone.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kdray.io import atomic_write, atomic_write_text

ALL_KINDS = ["finetune", "response", "feature", "relation", "attention", "embedding"]
# the kinds an SDPA pool caches (the attention kind needs eager attention; the all-kinds pool caches its maps too)
CACHED_KINDS = ["finetune", "response", "feature", "relation", "embedding"]

# target, margin, how the margin applies ("rel": limit = target * (1 + margin); "abs": target + margin)
TARGETS: dict[str, tuple[float, float, str]] = {
    "selector_ps50": (0.02, 0.01, "abs"),
    # issue #18: 1% at phase_steps 50, met where nothing reads the reward set (a frozen final run, untraced)
    "selector_untraced_ps50": (0.01, 0.005, "abs"),
    "cached_vs_plain": (1.10, 0.10, "rel"),
    # a step with kinds in the pool but not selected costs what a step whose pool never had them costs
    # (replaced "ft_resp_vs_all <= 0.8" at stop 21: that ratio shrank as `all` got cheaper, not as skipping got worse)
    "unselected_kinds_overhead": (1.00, 0.05, "rel"),
    "ray_per_trial_s": (5.0, 0.50, "rel"),
    # issue #18: Ray's per-trial cost once the sweep runs (start-up and shutdown excluded), as Ray measures its own
    "ray_steady_per_trial_s": (0.5, 0.50, "rel"),
    # issue #18: kdray's step against TextBrewer's on the same models and batches (``--peers`` only)
    "peer_vanilla_kd": (0.90, 0.10, "rel"),
    "peer_kd_hidden_attention": (0.70, 0.10, "rel"),
    "peer_vanilla_kd_bf16_teacher": (0.90, 0.10, "rel"),  # the same target, reached by a bf16 teacher forward
    "peer_vanilla_kd_int8_teacher": (0.90, 0.10, "rel"),  # ... or, on CPUs, by an int8 one
    "peer_kd_hidden_attention_bf16_teacher": (0.70, 0.10, "rel"),  # the same target, in other numerics
    "peer_kd_hidden_attention_int8_teacher": (0.70, 0.10, "rel"),
    # the same target as the live pair, kdray's teacher outputs read from its cache (TextBrewer has none)
    "peer_kd_hidden_attention_cached": (0.70, 0.10, "rel"),
}


@dataclass
class Row:
    """One measured number; ``seconds`` is the median wall time of one unit (step, phase, trial)."""

    section: str
    name: str
    model: str = ""
    batch_size: int = 0
    seq_len: int = 0
    seconds: float = math.nan
    value: float = math.nan
    unit: str = "s"
    ratio: float = math.nan  # to step/plain of the same model (or as named in ``note``)
    target: float = math.nan
    limit: float = math.nan  # target with its fixed margin
    status: str = ""  # pass | miss (within margin) | FAIL (beyond margin) | "" (no target)
    repeats: int = 0
    note: str = ""
    spread: float = math.nan  # IQR / median of the row's timed repeats (0.1: the middle half within 10%)
    ratio_q25: float = math.nan  # quartiles of the per-round ratios a checked ratio was measured with
    ratio_q75: float = math.nan
    noise_limit: float = math.nan  # target + (ratio_q75 - ratio_q25): the margin sized from the spread


@dataclass
class Sizes:
    """What one model setting is timed at.

    ``teacher`` names a local model (``minilm-l6``, ``tiny-bert``) or ``random:<shape>`` for a seeded
    random-init teacher of a ``kdray.perf.pair.SHAPES`` shape (paper scale needs no weights to be timed).
    """

    model: str
    teacher: str
    student_layers: int
    batch: int
    seq_len: int
    warmup: int
    repeats: int
    phases: int  # selector phases timed
    cache_rows: int  # rows the teacher-output cache is built over (also the step batches' source)
    compile: bool = False  # time the plain step with torch.compile too (train.compile)


# Quick: the loop's default batch (32, which the selector target's reward-set budget assumes) at 32 tokens; 6
# interleaved rounds, so that the quartiles of the checked per-round ratios mean something (4 did not: stop 23).
QUICK = [Sizes("minilm-l6[3/6]", "minilm-l6", 3, 32, 32, 1, 6, 2, 128)]
FULL = [
    Sizes("tiny-bert[2/4]", "tiny-bert", 2, 32, 128, 3, 15, 5, 1000, compile=True),
    Sizes("minilm-l6[3/6]", "minilm-l6", 3, 32, 128, 2, 7, 4, 1000, compile=True),
]
# The paper's scale (``run_bench(scale="paper")``): a BERT-base-sized random teacher (12 x 768), 6-layer student.
PAPER = [Sizes("bert-base[6/12]", "random:bert-base", 6, 32, 128, 1, 3, 2, 128, compile=True)]
SCALES = {"quick": QUICK, "full": FULL, "paper": PAPER}


def check(row: Row, key: str, value: float) -> Row:
    """Set the row's target, limits and status under the margin rule of the module docstring."""
    target, margin, how = TARGETS[key]
    row.target = target
    row.limit = target * (1 + margin) if how == "rel" else target + margin
    if math.isfinite(row.ratio_q25) and math.isfinite(row.ratio_q75):
        row.noise_limit = target + (row.ratio_q75 - row.ratio_q25)
    bound = max(row.limit, row.noise_limit) if math.isfinite(row.noise_limit) else row.limit
    row.status = "pass" if value <= target else ("miss" if value <= bound else "FAIL")
    return row


def machine(device: torch.device) -> dict[str, str]:
    """What the numbers were measured on (written beside every row)."""
    return {
        "cpus": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "device": f"cuda ({torch.cuda.get_device_name(0)}, bf16 autocast)" if device.type == "cuda" else "cpu",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def fmt(x: float) -> str:
    """A number for the table: blank for NaN, 3 significant places or so otherwise."""
    if isinstance(x, float) and math.isnan(x):
        return ""
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _spread(r: Row) -> str:
    parts = []
    if math.isfinite(r.spread):
        parts.append(f"±{r.spread / 2:.0%}")
    if math.isfinite(r.ratio_q25):
        parts.append(f"ratio [{fmt(r.ratio_q25)}, {fmt(r.ratio_q75)}]")
    return " ".join(parts)


def render(rows: list[Row], command: str, machine: dict[str, str], seconds: float, findings: str = "") -> str:
    """The markdown report: machine, command, then one table row per measurement (and the findings text)."""
    lines = [
        "# kdray bench",
        "",
        f"Command: `{command}` ({seconds:.0f} s)",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
        ("Ratios are to `step/plain` of the same model (forward + backward + AdamW step of the student, "
         "finetune only, the model's full forward; `step/plain_cls_top` is the same step as kdray runs it, its top "
         "layer computing the [CLS] row only). Repeats are interleaved (every configuration once per round, the order reversed each "
         "round); spread = half the interquartile range of the repeats, and for a checked ratio the quartiles "
         "of its per-round ratios. Status: pass = target met; miss = missed within the margin (the fixed "
         "margin, or the per-round spread when wider: `kdray.bench.rows`); FAIL = missed beyond it."),
        "",
        "| section | name | model | B x T | median s | spread | value | unit | ratio | target (limit) | status | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = f"{r.batch_size}x{r.seq_len}" if r.batch_size else (str(r.seq_len) if r.seq_len else "")
        tgt = ""
        if not math.isnan(r.target):
            tgt = f"{fmt(r.target)} ({fmt(r.limit)}" + (f"; spread {fmt(r.noise_limit)})" if math.isfinite(r.noise_limit) else ")")
        lines.append(f"| {r.section} | {r.name} | {r.model} | {shape} | {fmt(r.seconds)} | {_spread(r)} | {fmt(r.value)} "
                     f"| {r.unit} | {fmt(r.ratio)} | {tgt} | {r.status} | {r.note} |")
    return "\n".join(lines) + "\n" + findings


def write(rows: list[Row], out: Path, md: str, meta: dict[str, str]) -> None:
    """bench.parquet (one row per measurement, ``meta`` in every row) and bench.md, each atomically."""
    import pandas as pd

    df = pd.DataFrame([asdict(r) for r in rows])
    for k, v in meta.items():
        df[k] = v
    atomic_write(out / "bench.parquet", lambda fh: df.to_parquet(fh, index=False))
    atomic_write_text(out / "bench.md", md)
