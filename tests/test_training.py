"""The training toolkit the teacher stage and the loop share: schedule variants, param groups, metric keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

from kdray.knowledge import KnowledgeContext, build_knowledge
from kdray.training import amp_dtype, canonical_metrics, linear_schedule, param_groups, split_metrics, weight_files


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps + 1):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("steps, ratio", [(10, 0.25), (7, 0.0), (40, 0.1), (3, 0.5)])
def test_hf_linear_warmup_is_transformers_schedule(steps: int, ratio: float) -> None:
    """The teacher's variant gives the LR transformers gives, bit for bit (cached teachers keep their numbers)."""
    def sgd() -> torch.optim.SGD:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)

    hf = get_linear_schedule_with_warmup(sgd(), int(ratio * steps), steps)
    assert _lrs(linear_schedule(sgd(), steps, ratio, warmup="hf_linear"), steps) == _lrs(hf, steps)


def test_loop_warmup_learns_from_its_first_step() -> None:
    """The loop's variant: (step + 1) / (warmup + 1) during warm-up, then linear decay to 0."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    got = _lrs(linear_schedule(opt, 10, 0.25), 10)  # 2 warm-up steps
    assert got == pytest.approx([1 / 3, 2 / 3, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0], abs=1e-12)


def test_param_groups_decay_matrices_only() -> None:
    """Student and projections in order; biases and LayerNorm weights undecayed, every trainable parameter once."""
    torch.manual_seed(0)
    student = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                       intermediate_size=32, vocab_size=50, num_labels=2))
    knowledge = build_knowledge(["feature"], KnowledgeContext(layer_map=((1, 2),), student_width=16, teacher_width=32))
    student.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    decay, no_decay = param_groups([student, knowledge], 0.01)
    named = [*student.named_parameters(), *knowledge.named_parameters()]
    expect_no_decay = [p for n, p in named if p.requires_grad and (p.ndim < 2 or "LayerNorm" in n)]
    expect_decay = [p for n, p in named if p.requires_grad and not (p.ndim < 2 or "LayerNorm" in n)]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in expect_no_decay]
    assert [id(p) for p in decay["params"]] == [id(p) for p in expect_decay]
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert any(p.ndim == 2 for p in knowledge.parameters()) and all(p.ndim == 2 for p in decay["params"])


def test_one_metric_key_convention() -> None:
    """{metric} with one dev split, {split}_{metric} with several; old teacher files' {split}/{metric} read back."""
    assert split_metrics("validation", {"accuracy": 0.5}, 1) == {"accuracy": 0.5}
    assert split_metrics("validation_matched", {"accuracy": 0.5}, 2) == {"validation_matched_accuracy": 0.5}
    old = {"validation_matched/accuracy": 0.8, "validation_mismatched/accuracy": 0.7}
    assert canonical_metrics(old) == {"validation_matched_accuracy": 0.8, "validation_mismatched_accuracy": 0.7}
    assert canonical_metrics({"f1": 0.9}) == {"f1": 0.9}


def test_weight_files_name_the_weights(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"12345")
    (tmp_path / "pytorch_model.bin").write_bytes(b"1")
    (tmp_path / "config.json").write_text(json.dumps({}))
    names = [(n, size) for n, size, _ in weight_files(tmp_path)]
    assert names == [("model.safetensors", 5), ("pytorch_model.bin", 1)]
    assert weight_files(tmp_path / "missing") == []


# --------------------------------------------------------------------------- train.precision


def test_precision_picks_the_autocast_dtype() -> None:
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("fp32", cpu) is None  # CPU runs stay fp32 unless asked
    assert amp_dtype("bf16", cpu) is torch.bfloat16  # honoured on CPUs (it was silently fp32 before)
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        amp_dtype("fp16", cpu)


def test_fp16_without_a_gpu_is_a_config_error() -> None:
    from kdray.config import RunConfig

    with pytest.raises(ValueError, match=r"train.precision: fp16 runs only on a GPU \(resources.use_gpu: true\)"):
        RunConfig.model_validate({"train": {"precision": "fp16"}})
    assert RunConfig.model_validate({"train": {"precision": "fp16"}, "resources": {"use_gpu": True}})


def test_teacher_fp16_without_a_gpu_is_a_config_error() -> None:
    from kdray.config import RunConfig

    with pytest.raises(ValueError, match=r"train.teacher_precision: fp16 runs only on a GPU .*allowed: same, fp32"):
        RunConfig.model_validate({"train": {"teacher_precision": "fp16"}})
    with pytest.raises(ValueError, match="teacher_precision"):
        RunConfig.model_validate({"train": {"teacher_precision": "half"}})


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_bf16_runs_the_step_in_bf16_on_cpu(glue_dir: Path, tiny_teacher: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, precision: str,
                                           dtype: torch.dtype) -> None:
    import kdray.run_setup as run_setup
    from conftest import rte_run
    from kdray.distill import train

    seen: list[torch.dtype] = []
    real = run_setup.load_teacher

    def spied(path, spec, **kw):  # the teacher's logits show the autocast its forward ran under
        model = real(path, spec, **kw)
        forward = model.forward
        model.forward = lambda *a, **k: (out := forward(*a, **k), seen.append(out.logits.dtype))[0]
        return model

    monkeypatch.setattr(run_setup, "load_teacher", spied)
    config = rte_run(glue_dir, tmp_path / precision, **{"selector.name": "vanilla_kd", "train.max_steps": 2,
                                                      "train.precision": precision})
    result = train(config, teacher_path=tiny_teacher)
    assert seen and set(seen) == {dtype}
    assert result.train_steps == 2 and math.isfinite(result.dev_score)


@pytest.mark.parametrize("precision,teacher_precision,teacher_dtype,student_dtype", [
    ("fp32", "bf16", torch.bfloat16, torch.float32),  # a bf16 teacher beside an fp32 student
    ("bf16", "fp32", torch.float32, torch.bfloat16),
    ("bf16", "same", torch.bfloat16, torch.bfloat16),
])
def test_teacher_precision_sets_only_the_teachers_forward(glue_dir: Path, tiny_teacher: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, precision: str,
                                                          teacher_precision: str, teacher_dtype: torch.dtype,
                                                          student_dtype: torch.dtype) -> None:
    """Every kind's loss takes the teacher's outputs in the other precision, and the run stays finite."""
    import kdray.run_setup as run_setup
    from conftest import rte_run
    from kdray.distill import train

    seen: dict[str, set[torch.dtype]] = {"teacher": set(), "student": set()}

    def spy(model: torch.nn.Module, who: str) -> torch.nn.Module:  # logits show the autocast the forward ran under
        forward = model.forward
        model.forward = lambda *a, **k: (out := forward(*a, **k), seen[who].add(out.logits.dtype))[0]
        return model

    real_teacher, real_student = run_setup.load_teacher, run_setup.build_student
    monkeypatch.setattr(run_setup, "load_teacher", lambda *a, **k: spy(real_teacher(*a, **k), "teacher"))
    monkeypatch.setattr(run_setup, "build_student", lambda *a, **k: spy(real_student(*a, **k), "student"))
    config = rte_run(glue_dir, tmp_path / teacher_precision, **{
        "selector.name": "all", "train.max_steps": 2, "train.precision": precision,
        "train.teacher_precision": teacher_precision,
        "knowledge.pool": ["finetune", "response", "feature", "relation", "attention", "embedding"]})
    result = train(config, teacher_path=tiny_teacher)
    assert seen["teacher"] == {teacher_dtype}
    assert student_dtype in seen["student"]  # training forwards (eval forwards run without autocast)
    assert result.train_steps == 2 and math.isfinite(result.dev_score)
