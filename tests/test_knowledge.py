"""The knowledge pool: each loss on cases whose answer is known by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from kdray.knowledge import (
    KNOWLEDGE,
    KnowledgeContext,
    ModelOutputs,
    build_knowledge,
    fsp_matrix,
    needs_of,
    run_model,
)

POOL = ["finetune", "response", "feature", "relation", "attention", "embedding"]


def tiny_bert(hidden: int = 32, layers: int = 4, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        num_labels=2,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(cfg).eval()


def batch(pad_tail: int = 3, fill: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -pad_tail:] = 0
    ids[0, -pad_tail:] = fill
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": torch.tensor([0, 1, 1])}


def ctx(layer_map=((1, 2), (2, 4)), sw: int = 32, tw: int = 32, **kw) -> KnowledgeContext:
    return KnowledgeContext(layer_map=tuple(layer_map), student_width=sw, teacher_width=tw, student_heads=2, teacher_heads=2, **kw)


def all_outputs(model, b) -> ModelOutputs:
    n = model.config.num_hidden_layers
    return run_model(model, b, set(range(n + 1)), set(range(1, n + 1)))


def test_registry_has_every_kind_and_rejects_unknown() -> None:
    assert sorted(KNOWLEDGE) == sorted(POOL)
    with pytest.raises(ValueError, match="known: attention"):
        build_knowledge(["finetune", "nope"], ctx())


def test_student_equal_teacher_gives_zero_distillation_losses_and_gradients() -> None:
    teacher = tiny_bert()
    student = copy.deepcopy(teacher)
    b = batch()
    mods = build_knowledge(POOL, ctx(layer_map=((1, 1), (2, 2), (4, 4))))
    with torch.no_grad():
        t_out = all_outputs(teacher, b)
    for name in ["response", "feature", "relation", "attention", "embedding"]:
        student.zero_grad()
        loss = mods[name](all_outputs(student, b), t_out, b)
        assert loss.item() == pytest.approx(0.0, abs=1e-6), name
        loss.backward()
        grads = [p.grad.abs().max().item() for p in student.parameters() if p.grad is not None]
        assert max(grads, default=0.0) < 1e-6, name
    # ...and a different student is penalised by each of them
    other = all_outputs(tiny_bert(seed=3), b)
    for name in ["response", "feature", "relation", "attention", "embedding"]:
        assert mods[name](other, t_out, b).item() > 1e-6, name


def test_response_is_temperature_scaled_kl() -> None:
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    mod = build_knowledge(["response"], ctx(temperature=2.0))["response"]
    p_t = torch.softmax(t / 2, -1)
    p_s = torch.softmax(s / 2, -1)
    expected = (p_t * (p_t.log() - p_s.log())).sum() * 4
    got = mod(ModelOutputs(logits=s), ModelOutputs(logits=t), {})
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fsp_matrix_by_hand() -> None:
    # one example, 3 positions (last is padding), widths 2 and 1
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    b = torch.tensor([[[1.0], [2.0], [100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # G[i, j] = (a[0,i] b[0,j] + a[1,i] b[1,j]) / 2 = ([1*1 + 3*2, 2*1 + 4*2]) / 2
    assert torch.allclose(fsp_matrix(a, b, mask), torch.tensor([[[3.5], [5.0]]]))


def test_relation_loss_by_hand() -> None:
    mod = build_knowledge(["relation"], ctx(layer_map=((1, 1),), sw=1, tw=1))["relation"]
    mask = torch.tensor([[1, 1]])
    s = ModelOutputs(logits=torch.zeros(1, 2), hidden={0: torch.tensor([[[1.0], [1.0]]]), 1: torch.tensor([[[2.0], [0.0]]])})
    t = ModelOutputs(logits=torch.zeros(1, 2), hidden={0: torch.tensor([[[1.0], [1.0]]]), 1: torch.tensor([[[3.0], [3.0]]])})
    # student FSP = (1*2 + 1*0)/2 = 1; teacher FSP = (3 + 3)/2 = 3; MSE = 4
    assert mod(s, t, {"attention_mask": mask}).item() == pytest.approx(4.0)


def test_projections_bridge_widths_and_are_parameters() -> None:
    mods = build_knowledge(POOL, ctx(sw=32, tw=48))
    for name in ["feature", "relation", "embedding"]:
        weight = mods[name].proj.weight
        assert weight.shape == (48, 32), name
    assert not list(mods["response"].parameters()) and not list(mods["finetune"].parameters())
    same = build_knowledge(["feature"], ctx(sw=32, tw=32))
    assert not list(same.parameters())  # identity when widths match
    teacher, student = tiny_bert(hidden=48), tiny_bert(hidden=32, layers=2)
    b = batch()
    loss = sum(mods[k](all_outputs(student, b), all_outputs(teacher, b), b) for k in ["feature", "relation", "embedding"])
    loss.backward()
    assert all(mods[k].proj.weight.grad is not None for k in ["feature", "relation", "embedding"])


def test_padding_positions_do_not_change_masked_losses() -> None:
    teacher, student = tiny_bert(), tiny_bert(seed=5)
    mods = build_knowledge(POOL, ctx())
    b1, b2 = batch(fill=0), batch(fill=77)
    t1, t2 = all_outputs(teacher, b1), all_outputs(teacher, b2)
    s1, s2 = all_outputs(student, b1), all_outputs(student, b2)
    # perturb padded positions of every output further (cached outputs may carry garbage there)
    for out in (t2, s2):
        for h in out.hidden.values():
            h[0, -3:] += 10.0
        for a in out.attentions.values():
            a[0, :, -3:, :] += 1.0
            a[0, :, :, -3:] += 1.0
    for name in ["feature", "relation", "attention", "embedding"]:
        assert mods[name](s1, t1, b1).item() == pytest.approx(mods[name](s2, t2, b2).item(), rel=1e-4), name


def test_pkd_cls_normalized_feature() -> None:
    mod = build_knowledge(["feature"], ctx(layer_map=((1, 1),), sw=2, tw=2, feature_mode="cls_normalized"))["feature"]
    s = ModelOutputs(logits=torch.zeros(1, 2), hidden={1: torch.tensor([[[3.0, 0.0], [9.0, 9.0]]])})
    t = ModelOutputs(logits=torch.zeros(1, 2), hidden={1: torch.tensor([[[0.0, 5.0], [1.0, 1.0]]])})
    # normalised CLS: (1, 0) vs (0, 1) -> squared distance 2; other tokens ignored
    assert mod(s, t, {"attention_mask": torch.ones(1, 2)}).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="feature_mode"):
        build_knowledge(["feature"], ctx(feature_mode="bogus"))


def test_pkd_patient_loss_excludes_the_top_layer_at_pkds_scale() -> None:
    """feature_mode=pkd: MSE (mean over the width) of normalised [CLS], every mapped layer but the student's top."""
    pairs = ((1, 2), (2, 4), (3, 6))
    mod = build_knowledge(["feature"], ctx(layer_map=pairs, sw=2, tw=2, feature_mode="pkd"))["feature"]
    assert mod.needs().student_hidden == {1, 2} and mod.needs().teacher_hidden == {2, 4}
    cls = {1: [3.0, 0.0], 2: [1.0, 1.0], 3: [0.0, 7.0]}  # student [CLS] per layer
    tcls = {2: [0.0, 5.0], 4: [1.0, 1.0], 6: [1.0, 0.0]}
    s = ModelOutputs(logits=torch.zeros(1, 2), hidden={k: torch.tensor([[v, [9.0, 9.0]]]) for k, v in cls.items()})
    t = ModelOutputs(logits=torch.zeros(1, 2), hidden={k: torch.tensor([[v, [1.0, 1.0]]]) for k, v in tcls.items()})
    # layer 1: (1, 0) vs (0, 1) -> mean squared difference 1; layer 2: equal -> 0; layer 3 (top) is not used
    assert mod(s, t, {"attention_mask": torch.ones(1, 2)}).item() == pytest.approx(0.5)
    del s.hidden[3], t.hidden[6]
    assert mod(s, t, {"attention_mask": torch.ones(1, 2)}).item() == pytest.approx(0.5)  # never read
    with pytest.raises(ValueError, match="excludes the student's top layer 1"):
        build_knowledge(["feature"], ctx(layer_map=((1, 1),), sw=2, tw=2, feature_mode="pkd"))


def test_needs_only_for_selected_kinds() -> None:
    mods = build_knowledge(POOL, ctx())
    only_ft = needs_of(mods, {"finetune": 1.0, "response": 0.0, "feature": 0.0, "attention": 0.0})
    assert not only_ft.teacher and not only_ft.student_hidden and not only_ft.teacher_attentions
    kd = needs_of(mods, {"finetune": 1.0, "response": 0.5})
    assert kd.teacher and not kd.student_hidden and not kd.teacher_hidden
    feat = needs_of(mods, {"feature": 0.2, "attention": 1.0})
    assert feat.student_hidden == {1, 2} and feat.teacher_hidden == {2, 4}
    assert feat.student_attentions == {1, 2} and feat.teacher_attentions == {2, 4}


def test_run_model_asks_hf_only_for_what_is_needed() -> None:
    model = tiny_bert()
    seen: list[dict] = []
    original = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    model.forward = spy  # type: ignore[method-assign]
    out = run_model(model, batch(), cls_top=False)
    assert seen[-1]["output_hidden_states"] is False and seen[-1]["output_attentions"] is False
    assert out.hidden == {} and out.attentions == {}
    seen.clear()
    run_model(model, batch())  # logits only: kdray.top_layer's forward, which runs the layers itself
    assert seen == []
    out = run_model(model, batch(), {0, 2}, {4})
    assert set(out.hidden) == {0, 2} and set(out.attentions) == {4}
    assert out.attentions[4].shape == (3, 2, 10, 10)
