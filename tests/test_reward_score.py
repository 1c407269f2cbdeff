"""selector.reward.score: the reward set scored with cross-entropy (the task loss), the Brier score, or (regression)
1 - Pearson's r."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdray.config import ConfigError, RunConfig, validate
from kdray.knowledge import brier_loss, pearson_loss, reward_loss


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
    with pytest.raises(ConfigError, match=r"selector\.reward\.score.*'ce', 'brier' or 'pearson'"):
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


def test_pearson_is_one_minus_r_and_blind_to_the_heads_offset_and_scale() -> None:
    labels = torch.tensor([0.0, 1.0, 2.5, 4.0, 5.0])
    noisy = labels + torch.tensor([0.3, -0.4, 0.2, 0.5, -0.1])
    r = float(torch.corrcoef(torch.stack([noisy, labels]))[0, 1])
    assert pearson_loss(noisy, labels).item() == pytest.approx(1 - r, abs=1e-6)
    assert pearson_loss(3 * noisy + 5, labels).item() == pytest.approx(1 - r, abs=1e-6)  # the MSE moves a lot here
    assert pearson_loss(labels, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert pearson_loss(-labels, labels).item() == pytest.approx(2.0, abs=1e-6)
    assert pearson_loss(torch.full((5,), 2.0), labels).item() == 1.0  # a constant head: no correlation, no NaN
    assert reward_loss(noisy.unsqueeze(-1), labels, True, "pearson").item() == pytest.approx(1 - r, abs=1e-6)


def test_pearson_refuses_classification_and_per_row_values() -> None:
    with pytest.raises(ValueError, match="regression tasks only"):
        reward_loss(torch.zeros(2, 2), torch.tensor([0, 1]), False, "pearson")
    with pytest.raises(ValueError, match="set-level"):
        reward_loss(torch.zeros(2, 1), torch.tensor([0.0, 1.0]), True, "pearson", reduction="none")
    with pytest.raises(ConfigError, match=r"^run\.yaml: selector\.reward\.score: pearson scores regression tasks only.*rte"):
        validate(RunConfig, {"task": "rte", "selector": {"reward": {"score": "pearson"}}}, "run.yaml")
    assert validate(RunConfig, {"task": "stsb", "selector": {"reward": {"score": "pearson"}}}, "run.yaml")


def test_the_reward_set_is_scored_over_all_its_rows_at_once() -> None:
    """Pearson's r of the whole set, not a mean of per-batch r's; ce stays the row mean over every batch."""
    from transformers import BertConfig, BertForSequenceClassification

    from kdray.loop_data import RewardSet

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=1, problem_type="regression")
    model = BertForSequenceClassification(cfg).eval()
    items = [{"input_ids": torch.randint(1, 50, (6,)), "labels": torch.tensor(float(i % 5))} for i in range(10)]
    collate = lambda rows: {"input_ids": torch.stack([r["input_ids"] for r in rows]),  # noqa: E731
                            "attention_mask": torch.ones(len(rows), 6, dtype=torch.long),
                            "labels": torch.stack([r["labels"] for r in rows])}
    reward_set = RewardSet(items, collate, 4, torch.device("cpu"))
    assert len(reward_set.batches) == 3
    whole = collate(items)
    with torch.no_grad():
        preds = model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"]).logits
    labels = torch.stack([r["labels"] for r in items])
    assert reward_set.loss(model, True, "pearson") == pytest.approx(pearson_loss(preds.squeeze(-1), labels).item(), abs=1e-5)
    assert reward_set.loss(model, True, "ce") == pytest.approx(F.mse_loss(preds.squeeze(-1), labels).item(), abs=1e-5)
