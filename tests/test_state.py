"""The typed training state: checkpoints are its state dict, and a fork at a phase boundary replays exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from kdray.loop import Loop, train_steps
from kdray.run_setup import set_up
from kdray.state import Phase, TrainingState

POOL_A = {"finetune": 1.0, "response": 1.0, "feature": 0.0, "relation": 0.0}
POOL_B = {"finetune": 1.0, "response": 0.0, "feature": 1.0, "relation": 1.0}


def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts/lists, by path (model, optimiser, selector and RNG states)."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaN markers, e.g. the replay's "no exploration term", compare equal to themselves)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Trace rows equal value for value (repr keeps every float bit and makes NaN equal to NaN)."""
    return repr(a) == repr(b)


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return ta.keys() == tb.keys() and all(_bits_equal(ta[k], tb[k]) for k in ta)


def _loop_at_phase_boundary(rte_config: Callable, teacher: str, out: Path) -> Loop:
    # actor_critic (no episodes, learning in the final run): the selector's networks, replay and optimisers are
    # part of what a fork must copy; the first phase ends at step 3
    cfg = rte_config(out, **{"selector.name": "actor_critic", "selector.episodes": 0, "selector.stage2": "learning",
                             "selector.replay_batch": 1, "train.max_steps": 9, "train.eval_every": 3})
    loop = Loop(set_up(cfg, teacher))
    loop.start_segment(0)
    loop.run_segment(until=3)
    return loop


def test_fork_replays_a_branch_bit_identically(rte_config: Callable, tiny_teacher: str, tmp_path: Path) -> None:
    loop = _loop_at_phase_boundary(rte_config, tiny_teacher, tmp_path / "fork")
    state, setup = loop.state, loop.setup
    assert state.step == 3 and state.phase.weights is None and state.phase.next_state is not None  # a boundary
    fork = state.snapshot()
    batches = [setup.order.rows(0, s) for s in range(3, 6)]  # the next phase's batches

    def branch(weights: dict[str, float]) -> tuple[dict[str, float], float, dict[str, Any]]:
        state.restore(fork)
        assert torch.equal(torch.get_rng_state(), fork["rng"]["torch"])  # same dropout masks for every branch
        out = train_steps(setup, state, weights, batches)
        return out.losses, out.loss, state.snapshot()

    losses_a, loss_a, after_a = branch(POOL_A)
    losses_b, loss_b, after_b = branch(POOL_B)
    again_losses, again_loss, again_after = branch(POOL_A)
    assert set(losses_a) == {"finetune", "response"} and set(losses_b) == {"finetune", "feature", "relation"}
    assert again_losses == losses_a and again_loss == loss_a  # bit-identical floats
    assert same_state(again_after, after_a)  # weights, optimiser moments, schedule, RNG
    assert not same_state(after_b, after_a)
    assert any(not torch.equal(after_a["student"][k], after_b["student"][k]) for k in after_a["student"])
    # the branches leave the cursor and the selector alone, and the fork itself is never aliased
    assert after_a["step"] == after_b["step"] == 3 and same_state(after_a["selector"], fork["selector"])
    state.restore(fork)
    assert same_state(state.snapshot(), fork)


def test_restored_fork_continues_like_the_uninterrupted_run(rte_config: Callable, tiny_teacher: str,
                                                            tmp_path: Path) -> None:
    """snapshot -> train another branch -> restore -> finish gives the run that never forked."""
    forked = _loop_at_phase_boundary(rte_config, tiny_teacher, tmp_path / "forked")
    fork = forked.state.snapshot()
    train_steps(forked.setup, forked.state, POOL_B, [forked.setup.order.rows(0, s) for s in range(3, 7)])
    forked.state.restore(fork)
    forked.run_segment()
    straight = _loop_at_phase_boundary(rte_config, tiny_teacher, tmp_path / "straight")
    straight.run_segment()
    assert same_state(forked.state.state_dict(), straight.state.state_dict())
    assert same_rows(forked.state.traces, straight.state.traces) and forked.state.step == 9


def test_state_dict_loads_weights_only_and_round_trips(rte_config: Callable, tiny_teacher: str, tmp_path: Path) -> None:
    """A checkpoint is exactly the state dict: torch.load(weights_only=True) gives it back, typed fields included."""
    loop = _loop_at_phase_boundary(rte_config, tiny_teacher, tmp_path / "ckpt")
    path = tmp_path / "state.pt"
    torch.save(loop.state.state_dict(), path)
    saved = torch.load(path, weights_only=True)
    assert same_state(saved, loop.state.snapshot())
    fresh = Loop(loop.setup)
    fresh.start_segment(0)
    fresh.state.load_state_dict(saved)
    st: TrainingState = fresh.state
    assert isinstance(st.phase, Phase) and st.phase.next_state is not None
    assert st.counters == loop.state.counters and st.last_eval == loop.state.last_eval
    assert same_rows(st.traces, loop.state.traces) and (st.segment, st.step) == (0, 3) and st.last_eval.step == 3
    assert same_state(st.student.state_dict(), saved["student"])  # start_segment had reset it to the initialisation
    with pytest.raises(ValueError, match="checkpoint format 1"):  # an older kdray's untyped checkpoint dict
        st.load_state_dict({k: v for k, v in saved.items() if k != "format"})
