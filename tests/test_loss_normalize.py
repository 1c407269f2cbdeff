"""``knowledge.normalize``: each mode's scales, the gradient-norm probe, and exact resume."""

from __future__ import annotations

import typing

import pytest
import torch

from kdray.config import KnowledgeConfig
from kdray.knowledge import NORMALIZE_MODES, LossNormalizer, kind_grad_norms


def losses(*values: float, kinds: tuple[str, ...] = ("finetune", "response", "feature")) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, requires_grad=True) for k, v in zip(kinds, values)}


def scaled(norm: LossNormalizer, ls: dict[str, torch.Tensor]) -> dict[str, float]:
    scales = norm.scales(ls)
    assert all(not s.requires_grad and s.dim() == 0 for s in scales.values())
    return {k: float(scales[k] * ls[k].detach()) for k in ls}


def test_modes_match_the_config() -> None:
    assert typing.get_args(KnowledgeConfig.model_fields["normalize"].annotation) == NORMALIZE_MODES
    assert KnowledgeConfig().normalize == "none"
    norm = LossNormalizer.from_config(KnowledgeConfig(normalize="running-loss", normalize_momentum=0.5))
    assert norm.mode == "running-loss" and norm.momentum == 0.5
    with pytest.raises(ValueError, match="allowed: none, initial-loss"):
        LossNormalizer("per-kind")


def test_none_keeps_the_losses() -> None:
    assert scaled(LossNormalizer("none"), losses(2.0, 0.5, 0.01)) == pytest.approx({"finetune": 2.0, "response": 0.5,
                                                                                    "feature": 0.01})


def test_initial_loss_makes_each_kinds_first_scaled_loss_one() -> None:
    norm = LossNormalizer("initial-loss")
    assert scaled(norm, losses(2.0, 0.5)) == pytest.approx({"finetune": 1.0, "response": 1.0})
    later = scaled(norm, losses(1.0, 0.25, 0.02))  # feature computed for the first time now
    assert later == pytest.approx({"finetune": 0.5, "response": 0.5, "feature": 1.0})
    assert scaled(norm, losses(1.0, 0.5, 0.01)) == pytest.approx({"finetune": 0.5, "response": 1.0, "feature": 0.5})


def test_running_loss_divides_by_a_moving_average() -> None:
    norm = LossNormalizer("running-loss", momentum=0.5)
    assert scaled(norm, losses(4.0)) == pytest.approx({"finetune": 1.0})
    # EMA: 0.5 * 4 + 0.5 * 2 = 3 -> 2 / 3
    assert scaled(norm, losses(2.0)) == pytest.approx({"finetune": 2.0 / 3.0})
    assert scaled(norm, losses(3.0)) == pytest.approx({"finetune": 1.0})  # EMA 3


def test_gradient_norm_scales_each_kind_to_a_unit_gradient() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 2)
    x = torch.randn(8, 4)
    out = layer(x)
    ls = {"finetune": 10.0 * out.pow(2).mean(), "response": 0.01 * out.abs().mean()}
    norm = LossNormalizer("gradient-norm", every=3)
    assert norm.needs_grad_norms(1, ["finetune"])  # no norm measured yet
    assert scaled(norm, ls) == pytest.approx({k: float(v.detach()) for k, v in ls.items()})  # before a probe: scale 1
    norms = kind_grad_norms(ls, list(layer.parameters()))
    norm.observe_grad_norms(norms)
    assert not norm.needs_grad_norms(1, ["finetune", "response"]) and norm.needs_grad_norms(3, ["finetune"])
    scales = norm.scales(ls)
    for kind, loss in ls.items():
        grads = torch.autograd.grad(scales[kind] * loss, list(layer.parameters()), retain_graph=True)
        assert float(torch.sqrt(sum(g.pow(2).sum() for g in grads))) == pytest.approx(1.0, rel=1e-5), kind
    assert norms["finetune"] > 100 * norms["response"]  # the raw scales were far apart
    assert not LossNormalizer("running-loss").needs_grad_norms(0, ["finetune"])


@pytest.mark.parametrize("mode", NORMALIZE_MODES)
def test_state_dict_resumes_exactly(mode: str, tmp_path) -> None:
    norm = LossNormalizer(mode, momentum=0.7)
    for values in [(2.0, 0.3), (1.7, 0.29), (1.1, 0.31)]:
        norm.scales(losses(*values))
    norm.observe_grad_norms({"finetune": 3.0, "response": 0.2})
    resumed = LossNormalizer(mode, momentum=0.7)
    torch.save(norm.state_dict(), tmp_path / "norm.pt")
    resumed.load_state_dict(torch.load(tmp_path / "norm.pt", weights_only=True))
    for values in [(0.9, 0.28), (0.8, 0.27)]:
        a, b = norm.scales(losses(*values)), resumed.scales(losses(*values))
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="saved with knowledge.normalize"):
        LossNormalizer("none" if mode != "none" else "initial-loss").load_state_dict(norm.state_dict())
