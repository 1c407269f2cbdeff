"""``run_bench``: every section of ``kdray bench`` in one process, then bench.parquet and bench.md."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdray.bench.data import bench_data, data_path_row
from kdray.bench.findings import FINDINGS
from kdray.bench.model import bench_model
from kdray.bench.peers import peer_rows
from kdray.bench.ray_overhead import bench_ray
from kdray.bench.rows import SCALES, Row, fmt, machine, render, write
from kdray.perf.flops import gemm_peak


def log(msg: str) -> None:
    print(msg, flush=True)


def pick(device: str) -> torch.device:
    """``auto``: a GPU when torch sees one; ``cuda`` without one is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("kdray bench --device cuda: torch sees no CUDA device")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def command_line(quick: bool, out_dir: str, dev: torch.device, peers: bool, scale: str) -> str:
    """The command that reproduces this run (written into bench.md and every parquet row)."""
    return ("kdray bench" + (" --quick" if quick else "") + (" --scale paper" if scale == "paper" else "")
            + (" --peers" if peers else "") + f" --out {out_dir}" + (" --device cuda" if dev.type == "cuda" else ""))


def measure(scale: str, dev: torch.device, peers: bool, work: Path) -> list[Row]:
    """All sections: GEMM peak, each model setting, data path, peers (when asked), Ray."""
    quick = scale == "quick"
    peak = gemm_peak(dev)
    log(f"[bench] GEMM peak {peak.best / 1e9:.1f} GFLOP/s ({peak.dtype} {peak.size}^2)")
    rows: list[Row] = []
    for sizes in SCALES[scale]:
        log(f"[bench] {sizes.model} at batch {sizes.batch} x length {sizes.seq_len}")
        rows += bench_model(sizes, work, log, dev, peak)
    log("[bench] data loading")
    data = bench_data(work, log)
    plain = [r for r in rows if r.section == "step" and r.name == "plain"]
    path = data_path_row(data, plain[-1] if plain else None)
    rows += data + ([path] if path is not None else [])
    if peers:
        log("[bench] peers")
        rows += peer_rows(scale, 4 if quick else 7, 1, dev, peak, log)
    log("[bench] ray")
    try:  # kdray's wiring: 8 trials (quick) or 16, enough waves for a steady state; the comparison variants
        # (a new process per trial; as Ray Train trials, full only) 4 or 8
        rows += bench_ray(work, 8 if quick else 16, log, with_ray_train=not quick, other_trials=4 if quick else 8)
    except Exception as err:  # keep the other measurements; the missing Ray row fails the checks
        log(f"  ray: failed: {type(err).__name__}: {err}")
        rows.append(Row("ray", "failed", "local ray", status="FAIL", note=f"{type(err).__name__}: {err}"[:300]))
    return rows


def run_bench(quick: bool = False, out_dir: str = "results/bench", device: str = "auto", peers: bool = False,
              scale: str | None = None) -> int:
    """Time the step, selector, cache, data, FLOP, peer and Ray costs; write bench.parquet and bench.md.

    Args:
        quick: MiniLM at batch 32 x length 32 only, fewer repeats, 2 Ray trials (the CI setting);
            returns 1 when a ratio target is missed beyond its margin.
        out_dir: folder for ``bench.parquet`` (one row per measurement) and ``bench.md``.
        device: ``auto`` (a GPU when torch sees one, timed with the loop's bf16 autocast), ``cpu`` or ``cuda``.
        peers: add TextBrewer's steps on the same models and batches (``kdray.bench.peers``).
        scale: ``quick``, ``full`` or ``paper`` (BERT-base-sized random teacher, 6-layer student);
            None = ``quick`` when ``quick`` is set, else ``full``.

    Returns:
        0, or 1 in quick mode when a target check fails beyond its margin.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    scale = scale or ("quick" if quick else "full")
    if scale not in SCALES:
        raise ValueError(f"kdray bench: unknown scale {scale!r}; known: {sorted(SCALES)}")
    t_start = time.perf_counter()
    dev = pick(device)
    command = command_line(quick, out_dir, dev, peers, scale)
    with tempfile.TemporaryDirectory(prefix="kdray-bench-") as tmp:
        rows = measure(scale, dev, peers, Path(tmp))
    info = machine(dev)
    md = render(rows, command, info, time.perf_counter() - t_start, FINDINGS)
    print(md)
    write(rows, Path(out_dir), md, {"mode": scale, "command": command, **info,
                                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    failed = [r for r in rows if r.status == "FAIL"]
    for r in failed:
        print(f"[bench] target missed beyond margin: {r.section}/{r.name} ({r.model}) = {fmt(r.value)} {r.unit}, "
              f"target {fmt(r.target)}, limit {fmt(r.limit)}", file=sys.stderr)
    return 1 if quick and failed else 0
