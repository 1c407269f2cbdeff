"""``train.teacher_precision``: the int8 live teacher on CPUs (kdray.teacher_precision), its config check, its run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from kdray.knowledge import run_model
from kdray.teacher_precision import int8_engine, int8_linear_count, live_teacher, quantize_teacher
from kdray.training import autocast_for

pytestmark = pytest.mark.skipif(int8_engine() is None, reason="this torch build has no quantized engine")


def _teacher(hidden: int = 64) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=4, num_attention_heads=4, intermediate_size=4 * hidden,
                     vocab_size=200, num_labels=3, attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (6, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[3:, 17:] = 0  # padded rows
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_the_int8_copy_quantizes_every_linear_and_keeps_the_outputs() -> None:
    """Every Linear of the copy runs int8; logits, hidden states and attention maps stay fp32 and close to the
    fp32 teacher's (int8 rounding only); the teacher itself is untouched (the student and cache read it)."""
    teacher = _teacher()
    linears = sum(isinstance(m, nn.Linear) for m in teacher.modules())
    quantized = quantize_teacher(teacher)
    assert int8_linear_count(quantized) == linears > 0
    assert int8_linear_count(teacher) == 0 and all(p.dtype == torch.float32 for p in teacher.parameters())
    batch = _batch()
    with torch.no_grad():
        ref = run_model(teacher, batch, frozenset({2, 4}), frozenset({1, 3}))
        out = run_model(quantized, batch, frozenset({2, 4}), frozenset({1, 3}))
    assert out.logits.dtype == torch.float32
    assert torch.allclose(out.logits, ref.logits, atol=0.05 * float(ref.logits.abs().max()))
    for layer in (2, 4):
        err = (out.hidden[layer] - ref.hidden[layer]).norm() / ref.hidden[layer].norm()
        assert err < 0.05, (layer, float(err))
    for layer in (1, 3):
        assert (out.attentions[layer] - ref.attentions[layer]).abs().max() < 0.05
    assert not torch.equal(out.logits, ref.logits)  # it really ran other numerics


def test_live_teacher_picks_the_module_and_autocast_per_precision() -> None:
    teacher, cpu = _teacher(), torch.device("cpu")
    run_autocast = autocast_for(cpu, torch.bfloat16)
    same, same_autocast = live_teacher(teacher, "same", run_autocast, cpu)
    assert same is teacher and same_autocast is run_autocast
    fp32, fp32_autocast = live_teacher(teacher, "fp32", run_autocast, cpu)
    assert fp32 is teacher
    with fp32_autocast():
        assert not torch.is_autocast_enabled("cpu")
    int8, int8_autocast = live_teacher(teacher, "int8", run_autocast, cpu)
    assert int8 is not teacher and int8_linear_count(int8) > 0
    with int8_autocast():  # fp32 activations in, whatever the student's autocast
        assert not torch.is_autocast_enabled("cpu")


def test_int8_is_refused_for_gpu_runs_before_anything_starts() -> None:
    from kdray.config import RunConfig

    with pytest.raises(ValueError, match=r"train\.teacher_precision: int8 runs only on CPUs.*allowed: .*int8"):
        RunConfig.model_validate({"task": "rte", "train": {"teacher_precision": "int8"},
                                  "resources": {"use_gpu": True}})
    assert RunConfig.model_validate({"task": "rte", "train": {"teacher_precision": "int8"}}).train.teacher_precision \
        == "int8"


def test_a_local_sweep_refuses_int8_without_a_quantized_engine(glue_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    """A torch build without an x86 quantized engine cannot run the int8 teacher: a local sweep says so, naming
    the key, before Ray starts (a dry run included), instead of failing in every trial."""
    import yaml

    import kdray.teacher_precision as teacher_precision
    from kdray.sweep.run import run_sweep

    doc = {"name": "q", "tasks": ["rte"], "data": {"source": "local", "dir": str(glue_dir), "max_train_samples": 32},
           "teacher": {"model": "tiny-bert", "epochs": 1}, "train": {"max_steps": 2, "teacher_precision": "int8"},
           "search": {"mode": "grid", "space": {"selector.name": {"grid": ["vanilla_kd"]}}}}
    space = tmp_path / "q.yaml"
    space.write_text(yaml.safe_dump(doc))
    assert run_sweep(str(space), storage=str(tmp_path / "runs"), dry_run=True) == 0
    capfd.readouterr()
    monkeypatch.setattr(teacher_precision, "int8_engine", lambda: None)
    assert run_sweep(str(space), storage=str(tmp_path / "runs"), dry_run=True) == 2
    assert "train.teacher_precision: int8: this torch build has no quantized engine" in capfd.readouterr().err
    assert run_sweep(str(space), storage=str(tmp_path / "runs"), dry_run=True,
                     overrides={"train.teacher_precision": "fp32"}) == 0


def test_a_real_run_distills_from_the_int8_teacher(glue_dir: Path, tiny_teacher: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """On real RTE, every step's live teacher forward is the int8 copy's (a hook on it counts them); the run
    finishes with a finite dev score."""
    import kdray.run_setup as run_setup
    from conftest import rte_run
    from kdray.distill import train

    forwards: list[int] = []
    made: list[nn.Module] = []

    def counting(teacher, precision, autocast, device):
        live, live_autocast = live_teacher(teacher, precision, autocast, device)
        made.append(live)
        # counted at the embeddings: the logits-only forward (kdray.top_layer) runs the layers, not forward()
        live.base_model.embeddings.register_forward_hook(lambda *_: forwards.append(1))
        return live, live_autocast

    monkeypatch.setattr(run_setup, "live_teacher", counting)
    result = train(rte_run(glue_dir, tmp_path / "int8", **{"selector.name": "vanilla_kd", "train.max_steps": 3,
                                                          "train.teacher_precision": "int8"}), teacher_path=tiny_teacher)
    assert len(made) == 1 and int8_linear_count(made[0]) > 0
    assert len(forwards) == 3  # one live forward per step, all of them int8
    assert math.isfinite(result.dev_score)
