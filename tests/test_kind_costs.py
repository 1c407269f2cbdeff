"""Measured kind costs (kdray.kind_costs): what each kind adds to a step, and the loop setting them when
the compute-aware reward is on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from test_knowledge import batch, ctx, tiny_bert

from kdray.kind_costs import FLOOR, kind_seconds, relative_costs
from kdray.knowledge import build_knowledge
from kdray.step import teacher_source


def test_relative_costs_are_what_a_kind_adds_to_a_plain_step() -> None:
    costs = relative_costs({"finetune": 1.0, "response": 1.5, "relation": 1.02, "feature": 0.9})
    assert costs == pytest.approx({"finetune": FLOOR, "response": 0.5, "relation": 0.02, "feature": FLOOR})
    assert relative_costs({"response": 2.0, "feature": 1.0}) == pytest.approx({"response": 1.0, "feature": FLOOR})


def test_kind_seconds_charges_the_teacher_to_the_kinds_that_need_it() -> None:
    """A teacher that takes 60 ms makes response and feature (which need it) cost about that much more than
    finetune (which does not run it); nothing touches the student's .grad or the training RNG."""
    student, teacher = tiny_bert(layers=2, seed=1), tiny_bert(layers=4)
    student.train()
    knowledge = build_knowledge(["finetune", "response", "feature"], ctx())
    live = teacher_source(teacher, None, torch.device("cpu"))
    calls: list[int] = []

    def slow_teacher(b, rows, hidden, attn):
        calls.append(1)
        time.sleep(0.06)
        return live(b, rows, hidden, attn)

    rng = torch.get_rng_state()
    seconds = kind_seconds(student, knowledge, ["finetune", "response", "feature"], batch(), [0, 1, 2], slow_teacher)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in student.parameters())
    assert len(calls) == 2 * 3  # two teacher kinds, three repeats; finetune never runs the teacher
    costs = relative_costs(seconds)
    assert costs["finetune"] == FLOOR
    assert costs["response"] > 0.5 and costs["feature"] > 0.5  # 60 ms on top of a few-ms tiny step


@pytest.mark.parametrize("cost", [0.0, 0.2])
def test_the_loop_measures_kind_costs_only_when_the_cost_penalty_is_on(glue_dir: Path, tiny_teacher: str,
                                                                        tmp_path: Path, cost: float) -> None:
    from conftest import rte_run

    from kdray.distill import train

    config = rte_run(glue_dir, tmp_path / "run", **{"selector.name": "actor_critic", "selector.episodes": 0,
                                                    "selector.reward.cost": cost, "train.max_steps": 3})
    train(config, teacher_path=tiny_teacher)
    saved = torch.load(tmp_path / "run" / "selector.pt", weights_only=True)
    costs = saved["kind_costs"]
    if cost == 0.0:
        assert costs == {k: 1.0 for k in costs}  # nothing measured: the penalty is off
    else:
        assert set(costs) == {"finetune", "response", "feature", "relation"}
        assert costs["finetune"] == FLOOR and all(v >= FLOOR for v in costs.values())
        assert costs != {k: 1.0 for k in costs}
