"""``kdray bench``: what a distillation step, the selector, the caches, data loading, peers and Ray cost.

Everything is timed in one process and one run, with warm-up and medians over interleaved repeats
(``kdray.perf.timing``), on the loop's own code (``kdray.step``; optimiser, schedule and precision from
``kdray.training``; the cache from ``kdray.teacher_outputs``).

Modules: :mod:`~kdray.bench.rows` (Row, Sizes, targets, the margin rule, the report),
:mod:`~kdray.bench.setup` (models and batches), :mod:`~kdray.bench.model` (cache, step, FLOP and
``train.compile`` rows), :mod:`~kdray.bench.selector`, :mod:`~kdray.bench.data`,
:mod:`~kdray.bench.peers` (TextBrewer), :mod:`~kdray.bench.ray_overhead`, :mod:`~kdray.bench.run`.

Rows (``bench.parquet``; ``bench.md`` has the table, the command and the machine):

1. ``step/plain``: student fine-tune step (finetune only, no teacher) — the floor;
2. ``step/all_live``: all six kinds, live teacher forward;
3. ``step/cached5``: every kind the teacher-output cache serves (finetune, response, feature, relation,
   embedding), and ``step/all_cached`` (all six with the cache: ``attention`` forces the live teacher);
4. ``step/ft_resp_live`` (and ``_cached``), ``vanilla_kd_*``: finetune + response only;
5. ``step/plain_compiled`` (full and paper scales): the plain step under ``torch.compile`` (``train.compile``);
6. ``flops/plain_step_vs_gemm_peak``: the plain step's achieved FLOP/s as a share of the machine's GEMM rate;
7. ``selector/*``: the actor-critic selector's work per phase, amortised over ``phase_steps`` 1, 10, 50;
8. ``cache/*``: teacher-output cache build time and size per 1,000 examples;
9. ``data/*``: ``glue.prepare_data`` throughput on real RTE, the per-step collate path, and
   ``data/path_vs_step`` (tokenize -> collate examples/s over the plain step's examples/s);
10. ``peers/*`` (``--peers``): kdray / TextBrewer on the same models and batches;
11. ``ray/*``: per-trial overhead of trivial sweeps on a local Ray: the whole sweep's wall per trial, the
    steady-state slope after the first wave of trials, and the fixed per-sweep remainder.

Targets (``--quick`` exits 1 when one is missed beyond its margin; the rule is in :mod:`kdray.bench.rows`):
selector at phase_steps=50 <= 2% of (1) (+1 point); cached step <= 1.10x (1) (10%); finetune+response
selected from the full pool <= the same step from a pool of just those (5%); Ray per-trial overhead <= 5 s
(50%) over a whole sweep and <= 0.5 s (50%) in steady state; with ``--peers``, vanilla KD <= 0.9x TextBrewer's and KD + hidden +
attention <= 0.7x (10% each).
"""

from typing import Any

from kdray.bench.rows import FULL, PAPER, QUICK, TARGETS, Row, Sizes, check, render


def __getattr__(name: str) -> Any:
    """``run_bench`` on first use: importing the package stays light, because Ray's trial processes import it
    for the trivial trials of :mod:`~kdray.bench.ray_overhead`, and a heavy import there is timed as Ray's
    per-trial overhead (it doubled it, 2.5 -> 4.6 s, when the package imported the whole bench)."""
    if name == "run_bench":
        from kdray.bench.run import run_bench

        return run_bench
    raise AttributeError(f"module 'kdray.bench' has no attribute {name!r}")


__all__ = ["FULL", "PAPER", "QUICK", "TARGETS", "Row", "Sizes", "check", "render", "run_bench"]
