"""Data loading rows: ``glue.prepare_data`` throughput on real RTE, the per-step collate path, and the
data path (tokenize -> collate) in examples/s against what the training step consumes."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from kdray.bench.rows import Row
from kdray.config import DataConfig
from kdray.glue import make_collator, prepare_data
from kdray.loop_data import collate_rows, epoch_batches
from kdray.models import load_tokenizer
from kdray.paths import glue_dir_from_env

REPO_GLUE = Path(__file__).resolve().parents[3] / "shared" / "glue"


def bench_data(work: Path, log: Callable[[str], None]) -> list[Row]:
    """Tokenization (uncached and cached) and collate throughput on the RTE task, MiniLM tokenizer, 128 tokens."""
    glue = glue_dir_from_env() or REPO_GLUE
    if not (glue / "RTE" / "train.tsv").is_file():
        log(f"  data: no GLUE RTE at {glue}; skipped")
        return [Row("data", "skipped", note=f"no GLUE RTE under {glue} (set KDRAY_GLUE_DIR)")]
    tok = load_tokenizer("minilm-l6")
    cache_dir = work / "tokenized"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cfg = DataConfig(source="local", dir=str(glue), cache_dir=str(cache_dir))
    out: list[Row] = []
    data = None
    for label in ("uncached", "cached"):
        t0 = time.perf_counter()
        data = prepare_data("rte", tok, cfg, 128, 1)
        dt = time.perf_counter() - t0
        n = len(data.train) + len(data.holdout) + sum(len(d) for d in data.dev.values())
        out.append(Row("data", f"prepare_{label}", "minilm tokenizer", 0, 128, dt, n / dt, "examples/s", repeats=1,
                       note=f"glue.prepare_data(rte): {n} rows (train+holdout+dev), {label} tokenization"))
        log(f"  data {label}: {n / dt:.0f} examples/s")
    assert data is not None
    collate = make_collator(tok)
    lengths = [int(x) for x in data.train["length"]]
    batches = epoch_batches(lengths, 32, 1, 0, True)
    t0 = time.perf_counter()
    n = 0
    for rows in batches:
        n += len(collate_rows(data.train, rows, collate)["input_ids"])
    dt = time.perf_counter() - t0
    out.append(Row("data", "collate_per_step", "minilm tokenizer", 32, 128, dt / len(batches), n / dt, "examples/s",
                   repeats=len(batches), note="the loop's per-step path: rows -> dynamic-padding batch (bucketed order)"))
    return out


def data_path_row(data_rows: list[Row], step: Row | None) -> Row | None:
    """Tokenize -> collate examples/s (uncached tokenization, then collate) against the step's examples/s.

    value > 1: the data path produces examples that many times faster than the plain step consumes them.
    """
    by_name = {r.name: r for r in data_rows}
    tok, col = by_name.get("prepare_uncached"), by_name.get("collate_per_step")
    if tok is None or col is None or step is None or not step.seconds > 0:
        return None
    path_rate = 1.0 / (1.0 / tok.value + 1.0 / col.value)
    step_rate = step.batch_size / step.seconds
    ratio = path_rate / step_rate if math.isfinite(path_rate) else math.nan
    return Row("data", "path_vs_step", step.model, step.batch_size, step.seq_len, math.nan, ratio, "x step examples/s",
               repeats=1, note=f"tokenize -> collate {path_rate:.0f} examples/s (RTE, 128 tokens) against the plain "
                               f"step's {step_rate:.1f} examples/s ({step.model}, {step.batch_size}x{step.seq_len})")
