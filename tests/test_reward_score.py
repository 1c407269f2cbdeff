"""selector.reward.score: the reward set scored with cross-entropy (the task loss) or the Brier score."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdray.config import ConfigError, RunConfig, validate
from kdray.knowledge import brier_loss, reward_loss


def test_brier_is_a_bounded_proper_score() -> None:
    labels = torch.tensor([0, 1])
    sure_right = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    sure_wrong = -sure_right
    unsure = torch.zeros(2, 2)
    assert brier_loss(sure_right, labels).item() == pytest.approx(0.0, abs=1e-9)
    assert brier_loss(sure_wrong, labels).item() == pytest.approx(2.0)  # bounded: CE would be 40 here
    assert brier_loss(unsure, labels).item() == pytest.approx(0.5)
    assert brier_loss(unsure, labels, "none").tolist() == pytest.approx([0.5, 0.5])
    assert F.cross_entropy(sure_wrong, labels).item() > 39


def test_reward_loss_picks_the_score_and_regression_keeps_its_squared_error() -> None:
    logits, labels = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([2])
    assert reward_loss(logits, labels, False, "ce") == pytest.approx(F.cross_entropy(logits, labels).item())
    assert reward_loss(logits, labels, False, "brier") == pytest.approx(brier_loss(logits, labels).item())
    preds, targets = torch.tensor([[2.5], [4.0]]), torch.tensor([3.0, 1.0])
    mse = F.mse_loss(preds.squeeze(-1), targets).item()
    assert reward_loss(preds, targets, True, "brier").item() == pytest.approx(mse)
    assert reward_loss(preds, targets, True, "ce").item() == pytest.approx(mse)


def test_an_unknown_score_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"selector\.reward\.score.*'ce' or 'brier'"):
        validate(RunConfig, {"selector": {"reward": {"score": "accuracy"}}}, "run.yaml")
    assert RunConfig.model_validate({"selector": {"reward": {"score": "brier"}}}).selector.reward.score == "brier"


def test_the_loop_scores_the_reward_set_with_the_configured_score(glue_dir, tiny_teacher, tmp_path) -> None:
    from conftest import rte_run

    from kdray.distill import train

    losses = {}
    for score in ("ce", "brier"):
        result = train(rte_run(glue_dir, tmp_path / score, **{"selector.name": "all", "train.max_steps": 3,
                                                            "selector.reward.score": score}), teacher_path=tiny_teacher)
        losses[score] = [t["reward_set_loss"] for t in result.traces]
    assert all(0 <= v <= 2 for v in losses["brier"])  # a Brier score, not a cross-entropy
    assert losses["brier"] != losses["ce"]
