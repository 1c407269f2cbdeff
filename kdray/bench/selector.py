"""The selectors' work per phase, as ``distill.train`` runs it at phase boundaries: the actor-critic's, and the
KS-Bandit's stage-2 features and decision.

Default pool, so SDPA models; a live teacher for the state's teacher [CLS]. Parts: state building
(the phase's last step returning both [CLS] states minus the same step without), reward-set scoring,
decide, observe (critic/actor updates); amortised over ``phase_steps`` 1, 10, 50 as a share of the
plain step.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from kdray.bench.rows import Row, check
from kdray.bench.setup import BenchSetup
from kdray.config import EVAL_BATCH_SIZE, KnowledgeConfig, SelectorConfig
from kdray.loop_data import RewardSet
from kdray.perf.timing import clock
from kdray.selection.bandit import BanditState
from kdray.selection.base import PhaseOutcome, PhaseState, build_selector
from kdray.state_features import measured_features
from kdray.step import distill_step, phase_state

PARTS = ("state", "reward_set", "decide", "observe")


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def phase_costs(s: BenchSetup, live: Any, eval_examples: int) -> dict[str, float]:
    """Median seconds of each part of a phase (and ``total``) with a reward set of ``eval_examples`` rows."""
    m = s.sdpa
    pool = KnowledgeConfig().pool
    sc = SelectorConfig(name="actor_critic")
    sc.reward.eval_examples = eval_examples
    selector = build_selector(sc, pool, 0)
    reward_set = RewardSet(s.rows[: min(eval_examples, len(s.rows))], s.collate, EVAL_BATCH_SIZE, s.device)
    parts: dict[str, list[float]] = {k: [] for k in PARTS}
    weights = {k: 1.0 for k in pool}
    losses = {k: 1.0 for k in pool}
    layers = (m.n_student, m.n_teacher)

    def last_step(state: bool) -> tuple[Any, float]:
        batch, rows = s.next_batch()
        t0 = clock()
        res = distill_step(m.student, m.student, m.knowledge, m.pool, weights, batch, rows, live, m.optimizer,
                           m.scheduler, s.scaler, 1.0, autocast=s.autocast, state_layers=layers if state else None)
        return res, clock() - t0

    # a run's first decision has no step behind it: it builds its state with its own forwards (once a run)
    batch, rows = s.next_batch()
    st = phase_state(m.student, live, True, batch, rows, m.n_student, m.n_teacher, 0, 1000, {}, autocast=s.autocast)
    before = reward_set.loss(m.student, False)
    for _ in range(selector.config.replay_batch):  # fill the replay so updates run at full batch
        selector.decide(st)
        selector.observe(PhaseOutcome(before, before, losses, st, False))
    for phase in range(1 + s.sizes.phases):
        t0 = clock()
        selector.decide(st)
        decide_s = clock() - t0
        # the phase's last step with and without returning the state (adjacent: their difference is the state's cost)
        _, without = last_step(False)
        res, with_state = last_step(True)
        t1 = clock()
        after = reward_set.loss(m.student, False)
        t2 = clock()
        nxt = PhaseState(res.teacher_cls, res.student_cls, losses, (phase + 1) / 1000, phase + 1)
        selector.observe(PhaseOutcome(before, after, losses, nxt, False))
        t3 = clock()
        before, st = after, nxt
        if phase == 0:
            continue  # warm-up
        for key, value in zip(PARTS, (with_state - without, t2 - t1, decide_s, t3 - t2)):
            parts[key].append(value)
    out = {k: _median(v) for k, v in parts.items()}
    out["total"] = max(out["state"], 0.0) + out["reward_set"] + out["decide"] + out["observe"]
    return out


# the bandit's state feature groups: its default, and every group issue 15 lists (gradient probe included)
BANDIT_FEATURES = {"default": ["progress", "lr"],
                   "full": ["progress", "lr", "losses", "grad_norms", "cosines", "holdout", "prev_action"]}


def bandit_decide_cost(s: BenchSetup, live: Any, groups: list[str]) -> float:
    """Median seconds of the frozen (stage-2) bandit's own work per phase: measuring its features (the gradient
    probe when asked for) and deciding; the reward set it also reads is ``phase_reward_set``'s cost."""
    m = s.sdpa
    pool = KnowledgeConfig().pool
    selector = build_selector(SelectorConfig.model_validate({"name": "bandit", "bandit": {"features": groups}}),
                              pool, 0)
    selector.training = False  # stage 2, stage2: frozen (the default)
    losses = {k: 1.0 for k in pool}
    times = []
    for phase in range(1 + s.sizes.phases):
        batch, rows = s.next_batch()
        base = phase_state(m.student, live, True, batch, rows, m.n_student, m.n_teacher, phase, 1000, losses,
                           autocast=s.autocast)
        t0 = clock()
        features = measured_features(groups, list(pool), 1.0, 0.6, -0.01, m.student, m.knowledge, batch, rows, live,
                                     s.autocast)
        selector.decide(BanditState(**vars(base), features=features))
        if phase:  # the first is warm-up
            times.append(clock() - t0)
    return _median(times)


def bandit_rows(s: BenchSetup, live: Any, plain: float, reward_set: float) -> list[Row]:
    """The bandit's stage-2 overhead at phase_steps 50, with its default and its full feature set, and with
    its default features and ``selector.trace_reward_set: false`` (nothing then reads the reward set: skipped)."""
    sz = s.sizes
    out = []
    for name, groups in BANDIT_FEATURES.items():
        own = bandit_decide_cost(s, live, groups)
        share = (own + reward_set) / 50 / plain
        out.append(Row("selector", f"bandit_{name}_ps50", sz.model, sz.batch, sz.seq_len, own, share, "x plain step",
                       share, repeats=sz.phases,
                       note=f"KS-Bandit, stage 2, features {'+'.join(groups)}: features and decision "
                            f"{own * 1000:.0f} ms/phase plus the reward set, amortised over phase_steps 50"))
        if name == "default":
            untraced = own / 50 / plain
            row = Row("selector", "bandit_untraced_ps50", sz.model, sz.batch, sz.seq_len, own, untraced,
                      "x plain step", untraced, repeats=sz.phases,
                      note=f"the same with selector.trace_reward_set: false: a frozen final run whose features do "
                           f"not read the reward set skips scoring it; {own * 1000:.0f} ms/phase over 50 steps")
            out.append(check(row, "selector_untraced_ps50", untraced))
    return out


def selector_rows(s: BenchSetup, live: Any, plain: float, log: Callable[[str], None]) -> list[Row]:
    """Per-phase parts, overhead at phase_steps 1/10/50 (50 is checked), networks only, a 256-row reward set."""
    sz = s.sizes
    m_name, b, t, n = sz.model, sz.batch, sz.seq_len, sz.phases
    default_rows = SelectorConfig().reward.eval_examples
    default = phase_costs(s, live, default_rows)
    notes = {"state": "the phase's last step returning both [CLS] states minus that step without (paired median; "
                      "negative = below timing noise, counted as 0 in total)",
             "reward_set": f"student loss on {default_rows} reward-set rows (eval batch {EVAL_BATCH_SIZE}, collated once), "
                           "once per phase",
             "decide": "encoder + actor + critic forward",
             "observe": "shaping + replay + 4 critic/actor updates",
             "total": "ratio = one phase in plain steps"}
    out = [Row("selector", f"phase_{part}", m_name, b, t, default[part], default[part] * 1000, "ms/phase",
               default[part] / plain, repeats=n, note=notes[part]) for part in (*PARTS, "total")]
    for ps in (1, 10, 50):
        share = default["total"] / ps / plain
        row = Row("selector", f"overhead_ps{ps}", m_name, b, t, default["total"] / ps, share, "x plain step", share,
                  repeats=n, note=f"defaults: reward.eval_examples={default_rows}, updates_per_phase=4, "
                                  "amortised over phase_steps")
        out.append(check(row, "selector_ps50", row.value) if ps == 50 else row)
    nets = (default["decide"] + default["observe"]) / 50
    out.append(Row("selector", "overhead_ps50_networks_only", m_name, b, t, nets, nets / plain, "x plain step",
                   nets / plain, repeats=n, note="decide + observe only (no state, no reward set)"))
    large = phase_costs(s, live, 256)["total"] / 50
    out.append(Row("selector", "overhead_ps50_eval256", m_name, b, t, large, large / plain, "x plain step", large / plain,
                   repeats=n, note="a larger reward set, for comparison: reward.eval_examples=256 (the default before stop 12)"))
    out += bandit_rows(s, live, plain, default["reward_set"])
    log("  selector per phase (ms): " + ", ".join(f"{k}={v * 1000:.1f}" for k, v in default.items())
        + "; bandit at ps50: " + ", ".join(f"{r.name}={r.value:.4f}" for r in out[-2:]))
    return out
