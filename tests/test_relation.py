"""The relation loss: the token-Gram path equals the FSP-matrix path (values and gradients), padding included."""

from __future__ import annotations

import pytest
import torch

from kdray.knowledge import KnowledgeContext, ModelOutputs, build_knowledge, fsp_matrix
from kdray.knowledge.relation import fsp_loss, fsp_loss_direct, fsp_loss_gram, gram_is_cheaper

# (batch, tokens, width, chain layers): T < H, T > H, T = H, a 2-layer chain, a long chain
SHAPES = [(3, 10, 32, 3), (4, 17, 8, 2), (2, 64, 96, 5), (5, 12, 12, 4), (2, 7, 40, 7)]


def padded_mask(batch: int, tokens: int, seed: int) -> torch.Tensor:
    """Random real lengths, one row fully real and (when batch > 2) one row with no real token at all."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, tokens + 1, (batch,), generator=g)
    lengths[0] = tokens
    if batch > 2:
        lengths[-1] = 0
    return (torch.arange(tokens)[None, :] < lengths[:, None]).long()


def chains(batch: int, tokens: int, width: int, layers: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # an outlier feature, as BERT's hidden states have, makes the FSP entries uneven
    scale = torch.ones(width)
    scale[0] = 8.0
    students = [(torch.randn(batch, tokens, width, generator=g) * scale).requires_grad_() for _ in range(layers)]
    teachers = [torch.randn(batch, tokens, width, generator=g) * scale for _ in range(layers)]
    return students, teachers


def exact_loss(students: list[torch.Tensor], teachers: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The FSP-matrix definition in float64 (the ground truth both fp32 paths are held to)."""
    m = mask.double().unsqueeze(-1)
    n = m.sum(1, keepdim=True).clamp_min(1.0)

    def fsp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bti,btj->bij", a.double() * m, b.double() * m) / n

    pairs = [(fsp(students[i], students[i + 1]) - fsp(teachers[i], teachers[i + 1])).pow(2).mean()
             for i in range(len(students) - 1)]
    return torch.stack(pairs).mean()


def value_and_grads(fn, students, teachers, mask) -> tuple[float, list[torch.Tensor]]:
    loss = fn(students, teachers, mask)
    grads = torch.autograd.grad(loss, students)
    return loss.item(), [g.double() for g in grads]


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_path_equals_fsp_matrices_in_value_and_gradient(shape: tuple[int, int, int, int]) -> None:
    b, t, h, layers = shape
    students, teachers = chains(b, t, h, layers, seed=sum(shape))
    mask = padded_mask(b, t, seed=t)
    truth, truth_grads = value_and_grads(exact_loss, students, teachers, mask)
    for fn in (fsp_loss_direct, fsp_loss_gram):
        value, grads = value_and_grads(fn, students, teachers, mask)
        assert value == pytest.approx(truth, rel=1e-5), fn.__name__
        for g, ref in zip(grads, truth_grads):
            assert torch.allclose(g, ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item()), fn.__name__
    # padding carries no gradient, and a row with no real token contributes nothing
    grads = value_and_grads(fsp_loss_gram, students, teachers, mask)[1]
    for g in grads:
        assert g[mask == 0].abs().sum().item() == 0.0


def test_nearly_matching_layers_keep_exact_gradients() -> None:
    """When the FSP matrices almost match, the value's cancellation grows, but the gradients stay exact."""
    students, teachers = chains(4, 16, 48, 3, seed=5)
    students = [(t + 1e-2 * s.detach()).requires_grad_() for s, t in zip(students, teachers)]
    mask = padded_mask(4, 16, seed=2)
    truth, truth_grads = value_and_grads(exact_loss, students, teachers, mask)
    value, grads = value_and_grads(fsp_loss_gram, students, teachers, mask)
    assert value == pytest.approx(truth, rel=1e-2)
    for g, ref in zip(grads, truth_grads):
        assert torch.allclose(g, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())


def test_identical_student_and_teacher_give_zero() -> None:
    students, teachers = chains(3, 10, 32, 3, seed=1)
    same = [t.clone().requires_grad_() for t in teachers]
    mask = padded_mask(3, 10, seed=4)
    loss = fsp_loss_gram(same, teachers, mask)
    # the expansion subtracts equal O(1) terms computed by different matmuls (the student's [AA^T | AC^T] in one,
    # the teacher's CC^T in another), so zero holds to float32 rounding, not bit for bit (3.8e-8 seen at stop 22)
    assert 0.0 <= loss.item() < 1e-6
    for g in torch.autograd.grad(loss, same):
        assert g.abs().max().item() < 1e-5


def test_gram_path_stays_fp32_under_autocast_and_auto_keeps_direct_there() -> None:
    students, teachers = chains(2, 8, 32, 3, seed=7)
    mask = padded_mask(2, 8, seed=1)
    reference = fsp_loss_gram(students, teachers, mask).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fsp_loss_gram(students, teachers, mask).item() == pytest.approx(reference, rel=1e-6)
        auto = fsp_loss(students, teachers, mask).item()
        direct = fsp_loss_direct(students, teachers, mask).item()
    assert auto == direct  # reduced precision: the direct path, as before
    assert fsp_loss(students, teachers, mask).item() == reference  # fp32 and T < H: the gram path


def test_cost_model_picks_gram_for_short_sequences_of_wide_models() -> None:
    assert gram_is_cheaper(128, 384, 4) and gram_is_cheaper(128, 768, 7)
    assert not gram_is_cheaper(128, 64, 3)  # tiny-bert widths: the H×H matrices are the small ones
    assert not gram_is_cheaper(512, 384, 4)
    with pytest.raises(ValueError, match="known: auto"):
        fsp_loss([torch.zeros(1, 2, 3)] * 2, [torch.zeros(1, 2, 3)] * 2, torch.ones(1, 2), method="nope")


@pytest.mark.parametrize("widths", [(24, 40), (32, 32)])
def test_relation_kind_equals_the_fsp_matrix_definition(widths: tuple[int, int]) -> None:
    """The knowledge module (projection, chain from layer 0, padding) against fsp_matrix pair by pair."""
    sw, tw = widths
    layer_map = ((1, 2), (2, 4), (3, 6))
    ctx = KnowledgeContext(layer_map=layer_map, student_width=sw, teacher_width=tw)
    torch.manual_seed(0)
    module = build_knowledge(["relation"], ctx)["relation"]
    b, t = 4, 9  # T < H: the module takes the gram path
    g = torch.Generator().manual_seed(3)
    s_hidden = {i: torch.randn(b, t, sw, generator=g).requires_grad_() for i in range(4)}
    t_hidden = {i: torch.randn(b, t, tw, generator=g) for i in (0, 2, 4, 6)}
    batch = {"attention_mask": padded_mask(b, t, seed=9)}
    student = ModelOutputs(logits=torch.zeros(b, 2), hidden=s_hidden)
    teacher = ModelOutputs(logits=torch.zeros(b, 2), hidden=t_hidden)

    chain = [(0, 0), *layer_map]
    mask = batch["attention_mask"]
    reference = torch.stack([
        (fsp_matrix(module.proj(s_hidden[sa]), module.proj(s_hidden[sb]), mask)
         - fsp_matrix(t_hidden[ta], t_hidden[tb], mask)).pow(2).mean()
        for (sa, ta), (sb, tb) in zip(chain[:-1], chain[1:])
    ]).mean()
    params = [*s_hidden.values(), *module.parameters()]
    ref_grads = torch.autograd.grad(reference, params)
    loss = module(student, teacher, batch)
    grads = torch.autograd.grad(loss, params)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for g_new, g_ref in zip(grads, ref_grads):
        assert torch.allclose(g_new, g_ref, rtol=1e-4, atol=1e-6 * g_ref.abs().max().item())


@pytest.mark.parametrize("shape", SHAPES)
def test_a_precomputed_teacher_term_gives_the_same_loss_and_gradients(shape: tuple[int, int, int, int]) -> None:
    """The teacher-output cache's per-row ‖CᵀD‖² replaces the gram path's teacher-only Grams exactly."""
    from kdray.knowledge.relation import chain_fsp_sq

    b, t, h, layers = shape
    students, teachers = chains(b, t, h, layers, seed=sum(shape) + 1)
    mask = padded_mask(b, t, seed=t + 1)
    m = mask.float().unsqueeze(-1)
    stored = chain_fsp_sq([x * m for x in teachers])
    truth, truth_grads = value_and_grads(fsp_loss_gram, students, teachers, mask)
    value, grads = value_and_grads(lambda s, c, k: fsp_loss_gram(s, c, k, stored), students, teachers, mask)
    assert value == pytest.approx(truth, rel=1e-5, abs=1e-7)
    for g, want in zip(grads, truth_grads):
        torch.testing.assert_close(g, want)
    wrong = [x * 2 for x in stored]  # the stored term is used, not recomputed
    assert fsp_loss_gram(students, teachers, mask, wrong).item() > truth
