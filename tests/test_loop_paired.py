"""Stage-1 paired branches on tiny-bert + real RTE: every branch starts from one fork, the advantages the
bandit learns from are exactly reference-minus-branch reward-set losses, training continues from the
decided branch, the extra compute is counted, and a resume inside a paired phase stays bit-exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from test_state import same_rows, same_state

from kdray.branches import reward_set_loss
from kdray.distill import train
from kdray.loop import Loop, train_steps
from kdray.run_setup import set_up

PAIRED = {"selector.name": "bandit", "selector.episodes": 1, "selector.episode_steps": 5, "selector.phase_steps": 3,
          "selector.bandit.branches": 3, "train.max_steps": 3}


def _spy(selector: Any, name: str) -> list[Any]:
    """Record the arguments of every call of ``selector.<name>``."""
    calls: list[Any] = []
    real = getattr(selector, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    setattr(selector, name, wrapped)
    return calls


def test_branches_share_a_fork_and_training_continues_from_the_decided_one(
        rte_config: Callable, tiny_teacher: str, tmp_path: Path) -> None:
    loop = Loop(set_up(rte_config(tmp_path / "run", **PAIRED), tiny_teacher))
    loop.start_segment(0)
    st, setup = loop.state, loop.setup
    observed = _spy(st.selector, "observe_branches")
    fork = st.snapshot()  # the first decision builds no forward state, so the fork is this state's RNG too
    loop.run_segment(until=3)  # one full paired phase
    assert len(observed) == 1
    (_, branches), kwargs = observed[0]
    decided_after = st.traces[-1]["reward_set_loss"]
    after_phase = st.snapshot()
    assert len(branches) == 3 and branches[-1] == (kwargs["reference"], 0.0)
    assert len({tuple(sorted(w.items())) for w, _ in branches}) == 3  # three distinct weightings
    # replay every branch from the fork: the loop's advantages are reference-minus-branch losses, bit for bit
    afters = []
    for weights, _ in branches:
        st.restore(fork)
        train_steps(setup, st, weights, [setup.order.rows(0, s) for s in range(3)])
        afters.append(reward_set_loss(setup, st))
        if not afters[1:]:  # the decided branch: the loop's own state after the phase is its end state
            assert same_state(st.snapshot()["student"], after_phase["student"])
            assert same_state(st.snapshot()["optimizer"], after_phase["optimizer"])
    assert afters[0] == decided_after
    assert [adv for _, adv in branches] == [afters[-1] - a for a in afters]
    assert len(set(afters)) == 3  # the weightings did differ
    assert after_phase["counters"]["branch_steps"] == 2 * 3  # two side branches of three steps each


def test_paired_run_records_its_extra_compute(rte_config: Callable, tiny_teacher: str, tmp_path: Path) -> None:
    """Stage 1 (5 steps: a phase of 3 and a partial one of 2) runs 2 side branches per phase; the final
    run (3 steps) is unpaired."""
    result = train(rte_config(tmp_path / "run", **PAIRED), teacher_path=tiny_teacher)
    assert result.train_steps == 5 + 3 and result.branch_steps == 2 * 5
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["branch_steps"] == 10
    stage1 = [t for t in result.traces if t["episode"] == 0]
    final = [t for t in result.traces if t["episode"] == -1]
    assert {t["phase"] for t in stage1} == {0, 1} and {t["phase"] for t in final} == {2}
    # stage 1's reward is the decided branch's advantage, with the bandit's prediction of exactly it
    assert all(abs(t["reward"]) < 1.0 and t["q_value"] == t["q_value"] for t in stage1)


def test_resume_inside_a_paired_phase_is_bit_exact(rte_config: Callable, tiny_teacher: str, tmp_path: Path) -> None:
    over = {**PAIRED, "train.checkpoint_every": 2}
    full = Loop(set_up(rte_config(tmp_path / "full", **over), tiny_teacher))
    full.start_segment(0)
    while not full.final:
        full.run_segment()
    full.run_segment()
    cut = Loop(set_up(rte_config(tmp_path / "cut", **over), tiny_teacher))
    cut.start_segment(0)
    cut.run_segment(until=2)  # checkpointed at step 2, inside the first paired phase (its side branches done)
    assert cut.state.phase.branches and cut.state.phase.count == 2
    resumed = Loop(set_up(rte_config(tmp_path / "cut", **over), tiny_teacher))
    resumed.resume(str(tmp_path / "cut" / "checkpoint"))
    assert resumed.state.phase.branches == cut.state.phase.branches
    while not resumed.final:
        resumed.run_segment()
    resumed.run_segment()
    a, b = full.state.state_dict(), resumed.state.state_dict()
    assert same_state(a, b) and same_rows(full.state.traces, resumed.state.traces)
    assert a["counters"]["branch_steps"] == b["counters"]["branch_steps"] == 10
