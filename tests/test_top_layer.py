"""kdray.top_layer: the top layer's [CLS] row alone gives the full forward's logits, gradients and lower layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForSequenceClassification

from kdray.knowledge import run_model
from kdray.top_layer import prunable


def _model(attn: str, dropout: float = 0.1, layers: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, num_labels=3, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification._from_config(cfg, attn_implementation=attn)


def _batch(padded: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 7:] = 0
        mask[3, 2:] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": torch.tensor([0, 2, 1, 0])}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [True, False])
def test_logits_and_lower_layers_equal_the_full_forward(attn: str, padded: bool) -> None:
    model, batch = _model(attn).eval(), _batch(padded)
    asked = frozenset({0, 1, 2})
    assert prunable(model, asked, frozenset())
    full = run_model(model, batch, asked, cls_top=False)
    cut = run_model(model, batch, asked)
    torch.testing.assert_close(cut.logits, full.logits, rtol=1e-5, atol=1e-6)
    assert sorted(cut.hidden) == [0, 1, 2]
    for layer in asked:
        torch.testing.assert_close(cut.hidden[layer], full.hidden[layer], rtol=1e-5, atol=1e-6)


def test_gradients_equal_the_full_forward_without_dropout() -> None:
    grads = []
    for cls_top in (False, True):
        model, batch = _model("sdpa", dropout=0.0).train(), _batch()
        logits = run_model(model, batch, cls_top=cls_top).logits
        nn.functional.cross_entropy(logits, batch["labels"]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_train_mode_keeps_dropout_in_the_pruned_layer() -> None:
    model, batch = _model("sdpa", dropout=0.5).train(), _batch()
    torch.manual_seed(3)
    a = run_model(model, batch).logits
    torch.manual_seed(4)
    b = run_model(model, batch).logits
    assert not torch.allclose(a, b)


def test_the_pruned_forward_does_less_work() -> None:
    model, batch = _model("sdpa").eval(), _batch()
    counts = []
    for cls_top in (False, True):
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            run_model(model, batch, cls_top=cls_top)
        counts.append(flops.get_total_flops())
    # one of three layers keeps its key and value projections only: well under 5/6 of the full count
    assert counts[1] < 0.8 * counts[0]


def test_full_forward_where_the_top_layer_or_attention_is_read() -> None:
    model, batch = _model("eager").eval(), _batch()
    assert not prunable(model, frozenset({3}), frozenset())
    assert not prunable(model, frozenset(), frozenset({1}))
    out = run_model(model, batch, frozenset({3}), frozenset({2}))
    assert out.hidden[3].shape == (4, 11, 32) and out.attentions[2].shape == (4, 4, 11, 11)


def test_wrapped_or_other_models_run_their_own_forward() -> None:
    model = _model("sdpa")

    class Subclass(BertForSequenceClassification):
        """A subclass may change its forward: never assume it is BERT's."""

    sub = Subclass(model.config)
    wrapper = nn.Sequential(model)  # e.g. DDP or torch.compile: their forward must run
    assert prunable(model, frozenset(), frozenset())
    assert not prunable(sub, frozenset(), frozenset())
    assert not prunable(wrapper, frozenset(), frozenset())
    pooler_less = _model("sdpa")
    pooler_less.bert.pooler = None
    assert not prunable(pooler_less, frozenset(), frozenset())



def test_a_layer_laid_out_otherwise_gets_the_models_own_forward() -> None:
    """A transformers release that renamed the pieces the [CLS]-row layer calls falls back, never half-runs."""
    model = _model("sdpa")
    assert prunable(model, frozenset(), frozenset())
    attn = model.bert.encoder.layer[-1].attention.self
    attn.q_proj = attn.query
    del attn.query
    assert not prunable(model, frozenset(), frozenset())
