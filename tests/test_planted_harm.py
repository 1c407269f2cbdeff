"""Planted harm on a real (tiny) model: the actor-critic selector learns to turn a harmful kind down.

A test-only hook corrupts one kind of teacher knowledge: ``response`` distils from a biased teacher (its
logits are replaced by a confident vote for one label on every example). Everything else is the
real loop (``kdray.distill.train``) on real RTE rows with tiny-bert, and the reward is the drop of the
student's loss on the held-out train slice, as in a sweep. After stage 1 the selector must give the
corrupted kind a lower mean weight than the other kinds' mean: by at least 0.1 on average over six seeds, and
in at least five of them. One seed may miss: the critic learns from a handful of noisy phases, and which
seed is unlucky moves with any change to the loop (measured over seeds 1-10: 9 of 10 positive, mean margin
0.30 with the phase state taken from the last training step; 10 of 10, mean 0.27, with a separate eval-mode
forward). A uniform selector's margin is 0, so the test measures learning, not the pool's layout.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from kdray.knowledge.base import ModelOutputs
from kdray.knowledge.response import ResponseKnowledge

pytestmark = pytest.mark.slow
POOL = ["finetune", "response", "feature"]
HARMFUL = "response"


def _biased_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the teacher logits ``response`` sees by a confident vote for label 0 on every example.

    A tiny random student cannot learn RTE's per-example labels in a few steps, only their balance, so the
    harm has to show there: this teacher pulls the student's prior to 88% on one label of a balanced task.
    """
    original = ResponseKnowledge.forward

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: dict[str, torch.Tensor]):
        logits = torch.zeros_like(student.logits)
        logits[:, 0] = 8.0
        return original(self, student, ModelOutputs(logits=logits, hidden=teacher.hidden, attentions=teacher.attentions),
                        batch)

    monkeypatch.setattr(ResponseKnowledge, "forward", forward)


def _stage1_weights(glue_dir: Path, teacher: str, out: Path, seed: int, selector: str) -> pd.Series:
    from kdray.config import RunConfig
    from kdray.distill import train

    config = RunConfig.model_validate({
        "task": "rte",
        "data": {"source": "local", "dir": str(glue_dir), "max_train_samples": 320, "max_eval_samples": 32,
                 "holdout_fraction": 0.2, "holdout_max": 64},
        "student": {"layers": 2},
        "train": {"max_steps": 8, "batch_size": 16, "eval_batch_size": 64, "max_seq_length": 48, "lr": 5e-4,
                  "warmup_ratio": 0.0, "progress": False, "seed": seed},
        "selector": {"name": selector, "action": "soft", "phase_steps": 2, "episodes": 8, "episode_steps": 40,
                     "noise_std": 0.3, "reward": {"eval_examples": 64}},
        "knowledge": {"pool": POOL},
        "output_dir": str(out),
    })
    result = train(config, teacher_path=teacher)
    traces = pd.DataFrame(result.traces)
    if selector == "actor_critic":  # the second half of stage 1 (after the critic's warm-up)
        traces = traces[traces["episode"] >= 4]
    return traces.groupby("knowledge")["weight"].mean()


SEEDS = range(1, 7)


def _margin(weights: pd.Series) -> float:
    """How much lower the harmful kind's mean weight is than the other kinds' mean (> 0: turned down)."""
    return float(weights.drop(HARMFUL).mean() - weights[HARMFUL])


def test_selector_turns_down_a_harmful_kind(glue_dir: Path, tiny_teacher: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _biased_teacher(monkeypatch)
    runs = {seed: _stage1_weights(glue_dir, tiny_teacher, tmp_path / f"ac{seed}", seed, "actor_critic")
            for seed in SEEDS}
    margins = {seed: round(_margin(w), 3) for seed, w in runs.items()}
    assert sum(margins.values()) / len(margins) > 0.1, margins
    assert sum(m > 0 for m in margins.values()) >= len(margins) - 1, margins


def test_criterion_fails_for_a_selector_that_does_not_learn(glue_dir: Path, tiny_teacher: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _biased_teacher(monkeypatch)
    weights = _stage1_weights(glue_dir, tiny_teacher, tmp_path / "all", 1, "all")
    assert _margin(weights) == 0.0  # every kind at 1.0: fails both parts of the criterion above
