"""``kdray bench``: what a distillation step, the selector, the caches, data loading and Ray cost.

Everything is timed in one process and one run, with warm-up and medians over
repeats, on the loop's own code (``kdray.step`` holds the bodies of
``distill.train``'s step, phase state and teacher-output source; the optimiser and
schedule come from ``kdray.distill``; the cache is ``kdray.teacher_outputs``).
Step measurements are interleaved (one repeat of every configuration per round),
so background load on a shared machine hits all of them alike.

Rows (``bench.parquet``; ``bench.md`` has the table, the command and the machine):

1. ``step/plain``: student fine-tune step (finetune only, no teacher) — the floor;
2. ``step/all_live``: all six kinds, live teacher forward;
3. ``step/cached5``: every kind the teacher-output cache serves (finetune, response,
   feature, relation, embedding: hidden states and logits; attentions are not cached),
   and ``step/all_cached`` (all six with the cache: ``attention`` forces the live teacher);
4. ``step/ft_resp_live`` (and ``_cached``): finetune + response only;
5. ``selector/*``: the actor-critic selector's work per phase (state building,
   reward-set scoring, decide, observe = critic/actor updates), amortised over
   ``phase_steps`` 1, 10, 50 as a ratio of (1); defaults (``reward.eval_examples=96``)
   and, separately, a larger reward set (256, the default before stop 12);
6. ``cache/*``: teacher-output cache build time and size per 1,000 examples;
7. ``data/*``: ``glue.prepare_data`` throughput on real RTE (uncached and cached) and
   the per-step collate path;
8. ``ray/*``: a sweep of 8 trivial trials (2 in ``--quick``, one concurrent round) on a
   local Ray started and stopped here, wired as ``kdray.sweep`` wires a one-worker trial
   (the loop in a 1-CPU Tune function trial): sweep wall time minus in-trial time, per
   trial; Ray start-up is reported apart, and (full mode) the same trials wired as DDP
   trials are (a 0.01-CPU Tune trial launching a ``TorchTrainer`` that reports through
   ``TuneReportCallback``).

Targets (ratios; ``--quick`` exits 1 when one is missed by more than its margin):
selector at phase_steps=50 <= 2% of (1) (margin +1 point); cached step <= 1.10x (1)
(margin 10%); finetune+response <= 0.8x all kinds live (margin 10%); Ray per-trial
overhead <= 5 s (margin 50%). Margins cover timing noise of medians on a shared
2-core machine, not systematic misses.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from kdray.config import EVAL_BATCH_SIZE  # what the loop scores reward sets and builds caches with

ALL_KINDS = ["finetune", "response", "feature", "relation", "attention", "embedding"]
CACHED_KINDS = ["finetune", "response", "feature", "relation", "embedding"]  # attentions are not cached

# Why targets are missed, and the proposed fixes (the rows named here hold the numbers).
FINDINGS = """
## Causes of missed targets, and how they were fixed (profiled; the rows named here hold the numbers)

- **selector/overhead_ps50** (target 2%; met since stop 12): the actor and critic are small
  (`overhead_ps50_networks_only`). Until stop 11 a phase cost a separate student and teacher forward for
  the state (0.73 plain steps) and a forward over 256 reward-set rows (1.96). The state now comes from the
  phase's last training step, whose forward already holds both final layers (`phase_state`: that step with
  and without returning it, a difference below timing noise), and the reward set is collated once. Scoring
  R rows costs about R/(3B) plain steps (a forward is about a third of a training step), so at B=32 and
  phase_steps=50 it fits 2% for R <= 0.02*3*B*50 = 96 rows: `reward.eval_examples` defaults to 96.
  `overhead_ps50_eval256` shows the old 256-row set (about 4%). Fewer rows make a noisier reward:
  `kdray reward-noise` measures how much (results/reward_noise), so users can buy fidelity knowingly.
  On a GPU the CPU-side critic/actor updates (`phase_observe`) weigh more, because the GPU step is short.
  The rows timed here all hold 128 real tokens, so no padding: real reward sets are scored in length-ordered
  batches of up to `train.eval_batch_size` (32), closed early before padding passes 10%
  (`loop_data.longest_first_batches`). Without that bound a long-tailed task paid for its longest row in
  every row of the first batch: 96 SST-2 reward rows (1,385 real tokens) filled 2,368 padded slots and were
  scored in 0.37 s, against 1,527 slots and 0.26 s with it (MiniLM 3-layer student, one thread, eval
  batches of 32, median of 5; stop 13).
- **step/cached5** (target 1.10x): `cached4_no_relation` is close to `plain`; the extra is `relation`:
  per step it recomputes the teacher's FSP matrices from cached hidden states (constant per row) and
  builds three `[B, H, H]` Gram matrices for the student plus their elementwise squared difference; for
  T < H these `[B, H, H]` tensors are larger than the hidden states themselves, so the cost does not
  shrink with the sequence length.
- **ray/per_trial_overhead** (target 5 s; fixed): each Ray Train V2 `TorchTrainer` starts a controller, helper
  actors and the worker, each a fresh Python process importing torch and ray; on 2 cores that was 17 s of a
  trial's overhead. One-worker trials now run the loop in the Tune trial itself (`resources.trainer: auto`);
  `per_trial_overhead_ray_train` keeps measuring the TorchTrainer path that DDP trials take.
"""

# target, margin, how the margin applies ("rel": limit = target * (1 + margin); "abs": target + margin)
TARGETS: dict[str, tuple[float, float, str]] = {
    "selector_ps50": (0.02, 0.01, "abs"),
    "cached_vs_plain": (1.10, 0.10, "rel"),
    "ft_resp_vs_all": (0.80, 0.10, "rel"),
    "ray_per_trial_s": (5.0, 0.50, "rel"),
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
    limit: float = math.nan  # target with its margin
    status: str = ""  # pass | miss (within margin) | FAIL (beyond margin) | "" (no target)
    repeats: int = 0
    note: str = ""


@dataclass
class Sizes:
    """What one model setting is timed at."""

    model: str
    teacher: str
    student_layers: int
    batch: int
    seq_len: int
    warmup: int
    repeats: int
    phases: int  # selector phases timed
    cache_rows: int  # rows the teacher-output cache is built over (also the step batches' source)


# Quick: the loop's default batch (32, which the selector target's reward-set budget assumes) at 32 tokens.
QUICK = [Sizes("minilm-l6[3/6]", "minilm-l6", 3, 32, 32, 1, 4, 2, 128)]
FULL = [
    Sizes("tiny-bert[2/4]", "tiny-bert", 2, 32, 128, 3, 15, 5, 1000),
    Sizes("minilm-l6[3/6]", "minilm-l6", 3, 32, 128, 2, 7, 4, 1000),
]


def _check(row: Row, key: str, value: float) -> Row:
    target, margin, how = TARGETS[key]
    row.target = target
    row.limit = target * (1 + margin) if how == "rel" else target + margin
    row.status = "pass" if value <= target else ("miss" if value <= row.limit else "FAIL")
    return row


def _clock() -> float:
    """Wall time after the GPU's queued work is done (CUDA kernels run asynchronously)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


# --------------------------------------------------------------------------- model steps


class _Models:
    """Teacher, student, knowledge pool and optimiser for one attention kernel, built as ``distill.train`` builds them.

    ``distill.train`` loads eager attention only when ``attention`` is in the pool (it needs the
    attention maps) and SDPA otherwise, so each configuration is timed with the kernel a user gets.
    """

    def __init__(self, sizes: Sizes, spec: Any, eager: bool, device: torch.device) -> None:
        from kdray.config import KnowledgeConfig, StudentConfig
        from kdray.distill import _optimizer, _scheduler
        from kdray.knowledge import KnowledgeContext, build_knowledge
        from kdray.models import build_student, layer_map, load_teacher

        torch.manual_seed(0)
        self.teacher = load_teacher(sizes.teacher, spec, attentions=eager).to(device).eval()
        self.teacher.requires_grad_(False)
        self.student = build_student(self.teacher, StudentConfig(layers=sizes.student_layers), spec).to(device)
        self.n_student = self.student.config.num_hidden_layers
        self.n_teacher = self.teacher.config.num_hidden_layers
        kcfg = KnowledgeConfig()
        pairs = layer_map(self.n_student, self.n_teacher, kcfg.layer_map)
        self.kctx = KnowledgeContext(
            layer_map=tuple((int(s), int(t)) for s, t in pairs),
            student_width=self.student.config.hidden_size,
            teacher_width=self.teacher.config.hidden_size,
            student_heads=self.student.config.num_attention_heads,
            teacher_heads=self.teacher.config.num_attention_heads,
            temperature=kcfg.temperature,
            is_regression=False,
            feature_mode=kcfg.feature_mode,
        )
        self.pool = ALL_KINDS if eager else CACHED_KINDS
        self.knowledge = build_knowledge(self.pool, self.kctx).to(device)
        self.optimizer = _optimizer(self.student, self.knowledge, 5e-5, 0.01)
        self.scheduler = _scheduler(self.optimizer, 10**6, 0.1)
        self.student.train()

    def cache_layers(self) -> set[int]:
        """The layers ``distill.train`` caches for a pool: every kind's teacher hidden states plus the last layer."""
        from kdray.knowledge import needs_of

        return set(needs_of(self.knowledge, {k: 1.0 for k in self.pool}).teacher_hidden) | {self.n_teacher}


class _Setup:
    """Both attention kernels' models and the synthetic rows every configuration draws its batches from."""

    def __init__(self, sizes: Sizes, work: Path, device: torch.device) -> None:
        from kdray.distill import _amp_dtype
        from kdray.glue import get_task

        self.sizes = sizes
        self.device = device
        self.spec = get_task("rte")
        self.eager = _Models(sizes, self.spec, True, self.device)
        self.sdpa = _Models(sizes, self.spec, False, self.device)
        # The loop's mixed precision: precision=auto is bf16 on GPUs that have it, fp32 on CPUs.
        amp = _amp_dtype("auto", device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

        def autocast() -> Any:
            return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

        self.autocast = autocast
        # Full-length synthetic pairs ([CLS] a [SEP] b [SEP], no padding): the worst case of a
        # length-bucketed batch at this max length, identical for every configuration.
        g = torch.Generator().manual_seed(0)
        vocab = int(self.eager.teacher.config.vocab_size)
        t = sizes.seq_len
        self.rows: list[dict[str, torch.Tensor]] = []
        for _ in range(sizes.cache_rows):
            ids = torch.randint(1000, vocab, (t,), generator=g)
            ids[0], ids[t // 2], ids[-1] = 101, 102, 102
            types = torch.zeros(t, dtype=torch.long)
            types[t // 2 + 1 :] = 1
            label = int(torch.randint(0, 2, (1,), generator=g))
            self.rows.append({"input_ids": ids, "attention_mask": torch.ones(t, dtype=torch.long),
                              "token_type_ids": types, "labels": torch.tensor(label)})
        self.work = work
        self._batch_i = 0

    @staticmethod
    def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def next_batch(self) -> tuple[dict[str, torch.Tensor], list[int]]:
        from kdray.loop_data import collate_rows, to_device

        b = self.sizes.batch
        n_batches = len(self.rows) // b
        start = (self._batch_i % n_batches) * b
        self._batch_i += 1
        rows = list(range(start, start + b))
        return to_device(collate_rows(self.rows, rows, self.collate), self.device), rows

    def build_cache(self) -> tuple[Any, float, int, list[int]]:
        """Build the teacher-output cache over all rows; returns (cache, seconds, bytes on disk, layers)."""
        from kdray.teacher_outputs import build_teacher_cache

        layers = self.eager.cache_layers()
        folder = self.work / f"teacher_outputs-{self.sizes.teacher}-{self.sizes.seq_len}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = _clock()
        # built with the SDPA teacher: a pool without attention (what caching serves) loads that kernel
        cache = build_teacher_cache(self.sdpa.teacher, self.rows, self.collate, layers, folder, EVAL_BATCH_SIZE, self.device)
        seconds = _clock() - t0
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        cache.keep_on(self.device)  # as distill.train does: on a GPU the cache moves there once when it fits
        return cache, seconds, size, sorted(layers)


def _bench_model(sizes: Sizes, work: Path, log: Callable[[str], None], device: torch.device) -> list[Row]:
    from kdray.config import KnowledgeConfig, SelectorConfig
    from kdray.loop_data import RewardSet
    from kdray.selection.base import PhaseOutcome, PhaseState, build_selector
    from kdray.step import distill_step, phase_state, teacher_source

    s = _Setup(sizes, work, device)
    B, T, M = sizes.batch, sizes.seq_len, sizes.model
    rows_out: list[Row] = []

    # 6. teacher-output cache: build time and size per 1,000 examples (before the cached steps use it)
    cache, build_s, nbytes, layers = s.build_cache()
    per_k = 1000 / sizes.cache_rows
    rows_out.append(Row("cache", "build_per_1k", M, 128, T, build_s * per_k, build_s * per_k, "s/1k examples",
                        repeats=1, note=f"{sizes.cache_rows} rows of {T} tokens, teacher hidden layers {layers} + logits, fp16"))
    rows_out.append(Row("cache", "size_per_1k", M, 0, T, math.nan, nbytes * per_k / 2**20, "MiB/1k examples",
                        repeats=1, note=f"unpadded fp16; {T} real tokens per row"))
    log(f"  cache: {build_s * per_k:.1f} s and {nbytes * per_k / 2**20:.1f} MiB per 1k examples")

    # (models, kinds selected, cached?, note); the kernel is the one distill.train loads for that pool
    configs: dict[str, tuple[_Models, list[str], bool, str]] = {
        "plain": (s.sdpa, ["finetune"], False, "finetune only, no teacher forward (SDPA: pool without attention)"),
        "plain_eager": (s.eager, ["finetune"], False, "finetune only, eager attention (a pool with attention)"),
        "all_live": (s.eager, ALL_KINDS, False, "all 6 kinds, live teacher (eager attention)"),
        "cached5": (s.sdpa, CACHED_KINDS, True, "finetune, response, feature, relation, embedding from the cache (SDPA)"),
        "all_cached": (s.eager, ALL_KINDS, True, "all 6 kinds with the cache: attention needs the live teacher"),
        "ft_resp_live": (s.eager, ["finetune", "response"], False,
                         "finetune + response selected from the all-kinds pool, live teacher (eager)"),
        "vanilla_kd_live": (s.sdpa, ["finetune", "response"], False, "pool = finetune + response, live teacher (SDPA)"),
        "vanilla_kd_cached": (s.sdpa, ["finetune", "response"], True, "pool = finetune + response, from the cache"),
        "cached4_no_relation": (s.sdpa, ["finetune", "response", "feature", "embedding"], True,
                                "cached kinds without relation (what relation's FSP matrices cost)"),
    }
    sources = {id(m): (teacher_source(m.teacher, None, s.device, s.autocast),
                       teacher_source(m.teacher, cache, s.device, s.autocast))
               for m in (s.eager, s.sdpa)}

    def one(m: _Models, kinds: list[str], cached: bool) -> float:
        batch, rows = s.next_batch()
        fn = sources[id(m)][int(cached)]
        t0 = _clock()
        distill_step(m.student, m.student, m.knowledge, m.pool, {k: 1.0 for k in kinds}, batch, rows, fn,
                     m.optimizer, m.scheduler, s.scaler, 1.0, autocast=s.autocast)
        return _clock() - t0

    times: dict[str, list[float]] = {k: [] for k in configs}
    for m, kinds, cached, _ in configs.values():
        for _ in range(sizes.warmup):
            one(m, kinds, cached)
    for _ in range(sizes.repeats):  # interleaved rounds
        for name, (m, kinds, cached, _) in configs.items():
            times[name].append(one(m, kinds, cached))
    med = {k: _median(v) for k, v in times.items()}
    plain = med["plain"]
    for name, (_, _, _, note) in configs.items():
        row = Row("step", name, M, B, T, med[name], med[name] * 1000, "ms/step", med[name] / plain,
                  repeats=sizes.repeats, note=note)
        if name == "cached5":
            _check(row, "cached_vs_plain", row.ratio)
        rows_out.append(row)
    ft = Row("step", "ft_resp_vs_all_live", M, B, T, med["ft_resp_live"], med["ft_resp_live"] / med["all_live"], "x",
             med["ft_resp_live"] / plain, repeats=sizes.repeats,
             note="value = ft_resp_live / all_live: what skipping saves inside one run (same models)")
    rows_out.append(_check(ft, "ft_resp_vs_all", ft.value))
    log("  steps (ms): " + ", ".join(f"{k}={v * 1000:.0f}" for k, v in med.items()))

    # 5. the actor-critic selector, per phase, as distill.train runs it at phase boundaries
    #    (default pool, so SDPA models; live teacher for the state's teacher [CLS])
    m = s.sdpa
    live = sources[id(m)][0]
    default_pool = KnowledgeConfig().pool

    def selector_phase_costs(eval_examples: int) -> dict[str, float]:
        sc = SelectorConfig(name="actor_critic")
        sc.reward.eval_examples = eval_examples
        selector = build_selector(sc, default_pool, 0)
        reward_set = RewardSet(s.rows[: min(eval_examples, len(s.rows))], s.collate, EVAL_BATCH_SIZE, s.device)
        parts: dict[str, list[float]] = {"state": [], "reward_set": [], "decide": [], "observe": []}
        weights = {k: 1.0 for k in default_pool}
        losses = {k: 1.0 for k in default_pool}
        layers = (m.n_student, m.n_teacher)

        def last_step(state: bool) -> tuple[Any, float]:
            batch, rows = s.next_batch()
            t0 = _clock()
            res = distill_step(m.student, m.student, m.knowledge, m.pool, weights, batch, rows, live, m.optimizer,
                               m.scheduler, s.scaler, 1.0, autocast=s.autocast, state_layers=layers if state else None)
            return res, _clock() - t0

        # a run's first decision has no step behind it: it builds its state with its own forwards (once a run)
        batch, rows = s.next_batch()
        st = phase_state(m.student, live, True, batch, rows, m.n_student, m.n_teacher, 0, 1000, {}, autocast=s.autocast)
        before = reward_set.loss(m.student, False)
        for _ in range(selector.config.replay_batch):  # fill the replay so updates run at full batch
            selector.decide(st)
            selector.observe(PhaseOutcome(before, before, losses, st, False))
        for phase in range(1 + sizes.phases):
            t0 = _clock()
            selector.decide(st)
            decide_s = _clock() - t0
            # the phase's last step, as distill.train runs it, with and without returning the state
            # (adjacent, so their difference is what the state costs that step)
            _, without = last_step(False)
            res, with_state = last_step(True)
            t1 = _clock()
            after = reward_set.loss(m.student, False)
            t2 = _clock()
            nxt = PhaseState(res.teacher_cls, res.student_cls, losses, (phase + 1) / 1000, phase + 1)
            selector.observe(PhaseOutcome(before, after, losses, nxt, False))
            t3 = _clock()
            before, st = after, nxt
            if phase == 0:
                continue  # warm-up
            parts["state"].append(with_state - without)
            parts["decide"].append(decide_s)
            parts["reward_set"].append(t2 - t1)
            parts["observe"].append(t3 - t2)
        out = {k: _median(v) for k, v in parts.items()}
        out["total"] = max(out["state"], 0.0) + out["reward_set"] + out["decide"] + out["observe"]
        return out

    default_rows = SelectorConfig().reward.eval_examples
    default = selector_phase_costs(default_rows)
    notes = {"state": "the phase's last step returning both [CLS] states minus that step without (paired median; "
                      "negative = below timing noise, counted as 0 in total)",
             "reward_set": f"student loss on {default_rows} reward-set rows (eval batch {EVAL_BATCH_SIZE}, collated once), "
                           "once per phase",
             "decide": "encoder + actor + critic forward",
             "observe": "shaping + replay + 4 critic/actor updates",
             "total": "ratio = one phase in plain steps"}
    for part in ("state", "reward_set", "decide", "observe", "total"):
        rows_out.append(Row("selector", f"phase_{part}", M, B, T, default[part], default[part] * 1000, "ms/phase",
                            default[part] / plain, repeats=sizes.phases, note=notes[part]))
    for ps in (1, 10, 50):
        row = Row("selector", f"overhead_ps{ps}", M, B, T, default["total"] / ps, default["total"] / ps / plain,
                  "x plain step", default["total"] / ps / plain, repeats=sizes.phases,
                  note=f"defaults: reward.eval_examples={default_rows}, updates_per_phase=4, amortised over phase_steps")
        if ps == 50:
            _check(row, "selector_ps50", row.value)
        rows_out.append(row)
    nets = default["decide"] + default["observe"]
    rows_out.append(Row("selector", "overhead_ps50_networks_only", M, B, T, nets / 50, nets / 50 / plain, "x plain step",
                        nets / 50 / plain, repeats=sizes.phases, note="decide + observe only (no state, no reward set)"))
    large = selector_phase_costs(256)
    rows_out.append(Row("selector", "overhead_ps50_eval256", M, B, T, large["total"] / 50, large["total"] / 50 / plain,
                        "x plain step", large["total"] / 50 / plain, repeats=sizes.phases,
                        note="a larger reward set, for comparison: reward.eval_examples=256 (the default before stop 12)"))
    log("  selector per phase (ms): " + ", ".join(f"{k}={v * 1000:.1f}" for k, v in default.items()))
    return rows_out


# --------------------------------------------------------------------------- data loading


def _bench_data(work: Path, log: Callable[[str], None]) -> list[Row]:
    from kdray.config import DataConfig
    from kdray.glue import make_collator, prepare_data
    from kdray.loop_data import collate_rows, epoch_batches
    from kdray.models import load_tokenizer
    from kdray.paths import glue_dir_from_env

    glue = glue_dir_from_env() or Path(__file__).resolve().parents[2] / "shared" / "glue"
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


# --------------------------------------------------------------------------- Ray


def _trivial_worker(config: dict[str, Any]) -> None:
    """Ray Train worker of a trivial trial: a few tiny matmuls, timed, then one report."""
    import ray.train

    t0 = time.perf_counter()
    x = torch.ones(8, 8)
    for _ in range(10):
        x = x @ x / 8
    seconds = time.perf_counter() - t0
    # Tune gets this report through TuneReportCallback; the trial reads the time back from a file
    # (Ray Train V2's Result.metrics is empty when reports go to Tune).
    Path(config["out"]).write_text(repr(seconds))
    ray.train.report({"in_trial_s": seconds})


def _trivial_trial(config: dict[str, Any]) -> None:
    """A Tune trial wired as ``kdray.sweep._trial_fn``: a TorchTrainer whose reports reach Tune."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from kdray.config import ResourcesConfig

    r = ResourcesConfig()
    t0 = time.perf_counter()
    trainer = TorchTrainer(
        _trivial_worker,
        train_loop_config={"out": str(Path(config["storage"]) / f"in_trial_{config['i']}.txt")},
        scaling_config=ray.train.ScalingConfig(num_workers=r.workers_per_trial, use_gpu=False,
                                               resources_per_worker={"CPU": r.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=f"bench-{config['i']}", storage_path=config["storage"],
                                       callbacks=[TuneReportCallback()]),
    )
    trainer.fit()
    fit_s = time.perf_counter() - t0
    in_trial = float((Path(config["storage"]) / f"in_trial_{config['i']}.txt").read_text())
    tune.report({"in_trial_s": in_trial, "fit_s": fit_s})


def _in_trial_trial(config: dict[str, Any]) -> None:
    """The same trivial work in the Tune trial itself, as kdray.sweep runs a one-worker trial (no Ray Train)."""
    from ray import tune

    t0 = time.perf_counter()
    x = torch.ones(8, 8)
    for _ in range(10):
        x = x @ x / 8
    tune.report({"in_trial_s": time.perf_counter() - t0, "fit_s": time.perf_counter() - t0})


def _bench_ray(work: Path, n_trials: int, log: Callable[[str], None], with_ray_train: bool) -> list[Row]:
    """Sweeps of ``n_trials`` trivial trials on a local Ray started and stopped here."""
    import ray
    from ray import tune

    from kdray.config import SweepConfig
    from kdray.sweep import QUIET_ENV, TRIAL_DRIVER_CPU, max_concurrent_trials
    from kdray.sweep import local_num_cpus as _local_num_cpus, tune_resources as _tune_resources

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    storage = work / "ray_storage"
    (storage / "train").mkdir(parents=True, exist_ok=True)
    sweep = SweepConfig()  # default resources: one 1-CPU worker per trial, run in the Tune trial (trainer auto)
    train_sweep = SweepConfig.model_validate({"resources": {"trainer": "ray_train"}})
    t0 = time.perf_counter()
    # address="local": always a fresh local cluster of our own, never another job's running one
    ray.init(address="local", num_cpus=_local_num_cpus(sweep), num_gpus=0, include_dashboard=False,
             dashboard_host="127.0.0.1",
             log_to_driver=False, configure_logging=True, logging_level="ERROR")
    start_s = time.perf_counter() - t0
    rows: list[Row] = []
    try:
        cluster = ray.cluster_resources()
        variants = [("sweep", _in_trial_trial, _tune_resources(sweep), max_concurrent_trials(sweep, cluster))]
        if with_ray_train:
            variants.append(("ray_train", _trivial_trial, {"CPU": TRIAL_DRIVER_CPU},
                             max_concurrent_trials(train_sweep, cluster)))
        for label, fn, resources, conc in variants:
            tuner = tune.Tuner(
                tune.with_resources(fn, resources),
                param_space={"i": tune.grid_search(list(range(n_trials))), "storage": str(storage / "train")},
                tune_config=tune.TuneConfig(max_concurrent_trials=conc, reuse_actors=False),
                run_config=tune.RunConfig(name=f"bench_{label}", storage_path=str(storage), verbose=0),
            )
            t1 = time.perf_counter()
            grid = tuner.fit()
            wall = time.perf_counter() - t1
            errors = [r.error for r in grid if r.error]
            if errors:
                raise RuntimeError(f"Ray bench trials failed: {errors[0]}")
            in_trial = sum(float(r.metrics["in_trial_s"]) for r in grid)
            latency = _median([float(r.metrics["fit_s"]) - float(r.metrics["in_trial_s"]) for r in grid])
            per = (wall - in_trial) / n_trials
            log(f"  ray {label}: {n_trials} trials in {wall:.1f} s ({conc} at a time), overhead {per:.2f} s/trial")
            if label == "sweep":
                rows.append(_check(Row(
                    "ray", "per_trial_overhead", "local ray", seconds=per, value=per, unit="s/trial", repeats=n_trials,
                    note=f"({wall:.1f} s sweep wall - {in_trial:.3f} s in-trial) / {n_trials} trials; kdray.sweep "
                         f"wiring of a one-worker trial (resources.trainer auto): the loop in a 1-CPU Tune "
                         f"function trial, {conc} at a time"), "ray_per_trial_s", per))
            else:
                rows.append(Row("ray", "per_trial_overhead_ray_train", "local ray", seconds=per, value=per,
                                unit="s/trial", repeats=n_trials,
                                note=f"the same trials as a Tune trial -> TorchTrainer(1 worker) (resources.trainer "
                                     f"ray_train; what every DDP trial pays), {conc} at a time"))
                rows.append(Row("ray", "trial_latency_ray_train", "local ray", seconds=latency, value=latency,
                                unit="s/trial", repeats=n_trials,
                                note="median TorchTrainer.fit wall minus in-trial time, inside a trial"))
    finally:
        t2 = time.perf_counter()
        ray.shutdown()
        stop_s = time.perf_counter() - t2
    rows.insert(0, Row("ray", "init", "local ray", seconds=start_s, value=start_s, unit="s", repeats=1,
                       note=f"ray.init({_local_num_cpus(sweep)} logical CPUs, no dashboard); shutdown {stop_s:.1f} s"))
    return rows


# --------------------------------------------------------------------------- report


def _machine(device: torch.device) -> dict[str, str]:
    return {
        "cpus": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "device": f"cuda ({torch.cuda.get_device_name(0)}, bf16 autocast)" if device.type == "cuda" else "cpu",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def _fmt(x: float, unit: str = "") -> str:
    if isinstance(x, float) and math.isnan(x):
        return ""
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def render(rows: list[Row], command: str, machine: dict[str, str], seconds: float) -> str:
    """The markdown report: machine, command, then one table row per measurement."""
    lines = [
        "# kdray bench",
        "",
        f"Command: `{command}` ({seconds:.0f} s)",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
        "",
        "Ratios are to `step/plain` of the same model (forward + backward + AdamW step of the student, "
        "finetune only). Status: pass = target met; miss = missed within the noise margin; "
        "FAIL = missed beyond it.",
        "",
        "| section | name | model | B x T | median s | value | unit | ratio | target (limit) | status | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = f"{r.batch_size}x{r.seq_len}" if r.batch_size else (str(r.seq_len) if r.seq_len else "")
        tgt = f"{_fmt(r.target)} ({_fmt(r.limit)})" if not math.isnan(r.target) else ""
        lines.append(f"| {r.section} | {r.name} | {r.model} | {shape} | {_fmt(r.seconds)} | {_fmt(r.value)} | {r.unit} "
                     f"| {_fmt(r.ratio)} | {tgt} | {r.status} | {r.note} |")
    return "\n".join(lines) + "\n" + FINDINGS


def _write(rows: list[Row], out: Path, md: str, meta: dict[str, str]) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([asdict(r) for r in rows])
    for k, v in meta.items():
        df[k] = v
    tmp = out / f".bench.parquet.{os.getpid()}.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out / "bench.parquet")
    tmp = out / f".bench.md.{os.getpid()}.tmp"
    tmp.write_text(md)
    os.replace(tmp, out / "bench.md")


def run_bench(quick: bool = False, out_dir: str = "results/bench", device: str = "auto") -> int:
    """Time the step, selector, cache, data and Ray costs; write bench.parquet and bench.md under ``out_dir``.

    Args:
        quick: MiniLM at batch 16 x length 64 only, fewer repeats, 2 Ray trials (CI budget: about
            2 minutes on 2 quiet cores);
            returns 1 when a ratio target is missed by more than its margin.
        out_dir: folder for ``bench.parquet`` (one row per measurement) and ``bench.md``.
        device: ``auto`` (a GPU when torch sees one, timed with the loop's bf16 autocast), ``cpu`` or ``cuda``.

    Returns:
        0, or 1 in quick mode when a target check fails beyond its margin.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()
    mode = "quick" if quick else "full"
    command = "kdray bench" + (" --quick" if quick else "") + f" --out {out_dir}"

    def log(msg: str) -> None:
        print(msg, flush=True)

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("kdray bench --device cuda: torch sees no CUDA device")
    dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        command += " --device cuda"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kdray-bench-") as tmp:
        work = Path(tmp)
        for sizes in QUICK if quick else FULL:
            log(f"[bench] {sizes.model} at batch {sizes.batch} x length {sizes.seq_len}")
            rows += _bench_model(sizes, work, log, dev)
        log("[bench] data loading")
        rows += _bench_data(work, log)
        log("[bench] ray")
        # quick: one round of trials (CI budget); full: 8 trials, and the same as Ray Train trials
        try:
            rows += _bench_ray(work, 2 if quick else 8, log, with_ray_train=not quick)
        except Exception as err:  # keep the other measurements; the missing Ray row fails the checks below
            log(f"  ray: failed: {type(err).__name__}: {err}")
            rows.append(Row("ray", "failed", "local ray", status="FAIL", note=f"{type(err).__name__}: {err}"[:300]))
    seconds = time.perf_counter() - t_start
    machine = _machine(dev)
    md = render(rows, command, machine, seconds)
    print(md)
    _write(rows, Path(out_dir), md, {"mode": mode, "command": command, **machine,
                                     "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    failed = [r for r in rows if r.status == "FAIL"]
    for r in failed:
        print(f"[bench] target missed beyond margin: {r.section}/{r.name} ({r.model}) = {_fmt(r.value)} {r.unit}, "
              f"target {_fmt(r.target)}, limit {_fmt(r.limit)}", file=sys.stderr)
    return 1 if quick and failed else 0
