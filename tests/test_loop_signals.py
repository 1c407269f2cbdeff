"""What the loop measures for selectors and the loss: bandit state features, partial-phase step counts,
logits for dynamic_kd, the knowledge.normalize scales (resume bit-exact) and divergence as an error."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from test_loop_paired import _spy
from test_state import same_rows, same_state

from kdray.cli import main
from kdray.knowledge import kind_grad_norms, needs_of, run_model
from kdray.loop import Loop
from kdray.run_setup import set_up
from kdray.selection.bandit import HOLDOUT_CE, HOLDOUT_DELTA, LR, BanditState
from kdray.state_features import bandit_features


def _run(loop: Loop) -> Loop:
    loop.start_segment(0)
    while not loop.final:
        loop.run_segment()
    loop.run_segment()
    return loop


def test_bandit_decides_on_measured_features(rte_config: Callable, tiny_teacher: str, tmp_path: Path) -> None:
    groups = ["progress", "lr", "holdout", "grad_norms", "cosines"]
    cfg = rte_config(tmp_path / "run", **{"selector.name": "bandit", "selector.episodes": 0, "train.max_steps": 6,
                                          "selector.bandit.features": groups})
    loop = Loop(set_up(cfg, tiny_teacher))
    decided = _spy(loop.state.selector, "decide")
    _run(loop)
    states = [args[0] for args, _ in decided]
    assert len(states) == 2 and all(isinstance(s, BanditState) for s in states)
    first, second = (s.features for s in states)
    pool = loop.state.selector.pool
    # lr: warm-up of int(6 * 0.25) = 1 step, so LR factor 0.5 at step 0, then linear decay: 3/5 left at step 3
    assert first[LR] == pytest.approx(0.5) and second[LR] == pytest.approx(3 / 5)
    rewards = [t["reward_set_loss"] for t in loop.state.traces[:: len(pool)]]
    assert math.isnan(first[HOLDOUT_DELTA]) and second[HOLDOUT_CE] == rewards[0]
    assert second[HOLDOUT_DELTA] == pytest.approx(rewards[0] - first[HOLDOUT_CE])
    assert all(first[f"grad_norm.{k}"] > 0 for k in pool)
    cosines = [v for k, v in first.items() if k.startswith("cosine.")]
    assert len(cosines) == len(pool) * (len(pool) - 1) // 2 and all(-1 <= c <= 1 for c in cosines)


def test_gradient_probe_leaves_training_alone(rte_config: Callable, tiny_teacher: str, tmp_path: Path) -> None:
    """The probe's norms are kind_grad_norms' on the same (train-mode, dropout) forward; it leaves the RNG,
    the parameters' .grad and the weights as they were."""
    cfg = rte_config(tmp_path / "run", **{"selector.name": "bandit", "selector.episodes": 0})
    loop = Loop(set_up(cfg, tiny_teacher))
    loop.start_segment(0)
    st, setup = loop.state, loop.setup
    rows = setup.order.rows(0, 0)
    batch = setup.batch(rows)
    before = st.snapshot()
    features = bandit_features(setup, st, ["grad_norms"], batch, rows)
    assert same_state(st.snapshot(), before)
    assert all(p.grad is None for p in st.student.parameters())
    pool = list(st.selector.pool)
    need = needs_of(st.knowledge, {k: 1.0 for k in pool})
    with torch.random.fork_rng(devices=[]):  # the probe's own dropout masks
        s_out = run_model(st.student, batch, need.student_hidden, need.student_attentions)
        t_out = setup.teacher_fn(batch, rows, need.teacher_hidden, need.teacher_attentions)
        losses = {k: st.knowledge[k](s_out, t_out, batch) for k in pool}
    expected = kind_grad_norms(losses, list(st.student.parameters()))
    assert {k: features[f"grad_norm.{k}"] for k in pool} == pytest.approx(expected, rel=1e-4)  # fp32 summation order


def test_partial_phases_and_logits_reach_the_selector(rte_config: Callable, tiny_teacher: str, tmp_path: Path) -> None:
    cfg = rte_config(tmp_path / "run", **{"selector.name": "dynamic_kd", "train.max_steps": 5})
    loop = Loop(set_up(cfg, tiny_teacher))
    decided, observed = _spy(loop.state.selector, "decide"), _spy(loop.state.selector, "observe")
    _run(loop)
    outcomes = [args[0] for args, _ in observed]
    assert [o.steps for o in outcomes] == [3, 2]  # phase_steps 3: the last phase is partial
    states = [args[0] for args, _ in decided]
    batch = loop.setup.config.train.batch_size
    for s in states:  # the first from the segment's own forward, the second from step 3's training forward
        assert s.student_logits is not None and s.student_logits.shape == (batch, 2)
        assert s.teacher_logits is not None and s.teacher_logits.shape == (batch, 2)
    assert states[1].student_logits is outcomes[0].next_state.student_logits


@pytest.mark.parametrize("mode", ["running-loss", "gradient-norm"])
def test_normalized_run_resumes_bit_exactly(rte_config: Callable, tiny_teacher: str, tmp_path: Path, mode: str) -> None:
    over = {"knowledge.normalize": mode, "knowledge.normalize_every": 2, "train.checkpoint_every": 2,
            "train.max_steps": 6}
    full = _run(Loop(set_up(rte_config(tmp_path / "full", **over), tiny_teacher)))
    plain = _run(Loop(set_up(rte_config(tmp_path / "plain", **{**over, "knowledge.normalize": "none"}), tiny_teacher)))
    assert not same_state(full.state.state_dict()["student"], plain.state.state_dict()["student"])  # scales act
    saved = full.state.state_dict()["normalizer"]
    assert saved["mode"] == mode and (saved["reference"] if mode == "running-loss" else saved["grad_norms"])
    cut = Loop(set_up(rte_config(tmp_path / "cut", **over), tiny_teacher))
    cut.start_segment(0)
    cut.run_segment(until=3)  # checkpointed at step 2
    resumed = Loop(set_up(rte_config(tmp_path / "cut", **over), tiny_teacher))
    resumed.resume(str(tmp_path / "cut" / "checkpoint"))
    assert resumed.state.step == 2
    resumed.run_segment()
    assert same_state(full.state.state_dict(), resumed.state.state_dict())
    assert same_rows(full.state.traces, resumed.state.traces)


def test_divergence_names_the_steps_and_the_kind(rte_config: Callable, tiny_teacher: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = rte_config(tmp_path / "run", **{"train.lr": 1e30})
    with pytest.raises(FloatingPointError, match=r"final run: the \w+ loss went non-finite \((nan|inf)\) in steps 1-3"):
        _run(Loop(set_up(cfg, tiny_teacher)))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    code = main(["train", str(path), "--teacher", tiny_teacher, "--set", "train.lr=1e30"])
    err = capsys.readouterr().err  # besides the datasets library's progress bars: one line, no traceback
    errors = [line for line in err.splitlines() if line.startswith("kdray train: error:")]
    assert code != 0 and "Traceback" not in err and len(errors) == 1
    assert "went non-finite" in errors[0] and "steps 1-3" in errors[0] and err.rstrip().endswith(errors[0])


@pytest.mark.parametrize("trace, features, final_scored", [
    (False, ["progress", "lr"], False),  # a frozen final run that nothing reads the score from skips it
    (False, ["progress", "lr", "holdout"], True),  # its decisions read the score
    (True, ["progress", "lr"], True),  # the traces ask for it (the default)
])
def test_a_frozen_final_run_scores_the_reward_set_only_when_something_reads_it(
        rte_config: Callable, tiny_teacher: str, tmp_path: Path, trace: bool, features: list[str],
        final_scored: bool) -> None:
    cfg = rte_config(tmp_path / "run", **{"selector.name": "bandit", "selector.episodes": 1,
                                          "selector.episode_steps": 6, "train.max_steps": 6,
                                          "selector.trace_reward_set": trace, "selector.bandit.features": features})
    loop = _run(Loop(set_up(cfg, tiny_teacher)))
    stage1 = [t["reward_set_loss"] for t in loop.state.traces if t["episode"] == 0]
    final = [t["reward_set_loss"] for t in loop.state.traces if t["episode"] == -1]
    assert stage1 and all(math.isfinite(v) for v in stage1)  # the learner's reward: always scored
    assert final and all(math.isfinite(v) == final_scored for v in final)
    assert loop.state.selector.training is False  # stage2: frozen (the default)
