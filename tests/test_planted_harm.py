"""Planted harm on a real (tiny) model: the actor-critic selector learns to turn a harmful kind down.

A test-only hook corrupts one kind of teacher knowledge: ``response`` distils from a biased teacher (its
logits are replaced by a confident vote for one label on every example). Everything else is the
real loop (``kdray.distill.train``) on real RTE rows with tiny-bert, and the reward is the drop of the
student's loss on the held-out train slice, as in a sweep. After stage 1 the selector must give the
corrupted kind a lower mean weight than the other kinds' mean: by at least 0.1 on average over four seeds, and
in at least three of them. One seed may miss: the critic learns from a handful of noisy phases, and which
seed is unlucky moves with any change to the loop. Measured with this set-up (teacher-output cache, 32
tokens, fused AdamW) over seeds 1-8: 7 of 8 positive (seed 5: -0.09), mean margin 0.30 (seeds 1-4: 0.13, 0.48,
0.06, 0.55); with torch's per-tensor AdamW, whose rounding differs, it was 8 of 8, mean 0.33. The earlier
set-up (live teacher, 48 tokens, six seeds) measured 9 of 10 positive, mean 0.30, at about three times the
cost (measured back to back on the 2-core box: 316 s before, 112 s with the cache, 87 s with the fused AdamW;
under a load of 6 the earlier set-up hit the 600-s timeout). A uniform selector's margin is 0 and a random
one's is noise (seeds 1-4: 0.15, 0.06, -0.01, 0.01, mean 0.05), and the control test checks that both fail
the criterion, so the test measures learning, not the pool's layout.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from kdray.knowledge.base import ModelOutputs
from kdray.knowledge.response import ResponseKnowledge

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: these matrices are too small to gain from two, and on a loaded 2-core box two threads
    wait on each other at every op (the margins above were measured with one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
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
        # the teacher-output cache and 32 tokens: a third of the cost of a live teacher on 48 tokens
        "train": {"max_steps": 8, "batch_size": 16, "eval_batch_size": 64, "max_seq_length": 32, "lr": 5e-4,
                  "warmup_ratio": 0.0, "progress": False, "seed": seed, "teacher_cache": True},
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


SEEDS = range(1, 5)


def _margin(weights: pd.Series) -> float:
    """How much lower the harmful kind's mean weight is than the other kinds' mean (> 0: turned down)."""
    return float(weights.drop(HARMFUL).mean() - weights[HARMFUL])


def _turned_down(margins: dict[int, float]) -> bool:
    """The claim: a mean margin above 0.1, and at most one seed at or below 0."""
    return sum(margins.values()) / len(margins) > 0.1 and sum(m > 0 for m in margins.values()) >= len(margins) - 1


def _margins(glue_dir: Path, teacher: str, out: Path, selector: str) -> dict[int, float]:
    return {seed: round(_margin(_stage1_weights(glue_dir, teacher, out / f"{selector}{seed}", seed, selector)), 3)
            for seed in SEEDS}


def test_selector_turns_down_a_harmful_kind(glue_dir: Path, tiny_teacher: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _biased_teacher(monkeypatch)
    margins = _margins(glue_dir, tiny_teacher, tmp_path, "actor_critic")
    assert _turned_down(margins), margins


def test_criterion_fails_for_selectors_that_do_not_learn(glue_dir: Path, tiny_teacher: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _biased_teacher(monkeypatch)
    uniform = _margins(glue_dir, tiny_teacher, tmp_path, "all")
    assert set(uniform.values()) == {0.0} and not _turned_down(uniform)  # every kind at 1.0
    random = _margins(glue_dir, tiny_teacher, tmp_path, "random_soft")
    assert not _turned_down(random), random  # weights drawn blind to the harm
