"""The training toolkit the teacher stage and the loop share: schedule variants, param groups, metric keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

from kdray.knowledge import KnowledgeContext, build_knowledge
from kdray.training import (adamw, amp_dtype, build_adamw, canonical_metrics, fused_adamw_applies, linear_schedule,
                            param_groups, split_metrics, weight_files)


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


def _small_bert(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=32, vocab_size=50, num_labels=2))


def test_adamw_is_fused_on_cpu_and_steps_like_the_unfused_one() -> None:
    """The loop's and the teacher's AdamW use torch's fused kernel on CPU, and ten steps of it land where ten
    steps of the per-tensor AdamW land (same groups, float tolerance): the switch is speed, not a new optimizer."""
    fused_model, plain_model = _small_bert(0).eval(), _small_bert(0).eval()  # eval: no dropout draws between them
    fused = adamw([fused_model], 1e-2, 0.01)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(param_groups([plain_model], 0.01), lr=1e-2)
    assert not plain.defaults["fused"]
    torch.manual_seed(1)
    ids = torch.randint(0, 50, (4, 7))
    for _ in range(10):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            model(input_ids=ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    # rounding apart (a few 1e-6 after ten steps, largest on the key biases, whose gradient is zero up to rounding
    # and which Adam's normalisation turns into full-size steps either way), against moves of about 1e-1
    start = dict(_small_bert(0).named_parameters())
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=5e-5, msg=name)
    assert (fused_model.classifier.weight - start["classifier.weight"]).abs().max() > 5e-2  # it did train


def test_fused_adamw_only_where_torch_has_the_kernel() -> None:
    """CPU floating-point parameters fuse; parameters on the meta device (no kernel) or split across devices
    do not, and :func:`adamw` then builds torch's default AdamW instead of failing."""
    assert fused_adamw_applies([torch.zeros(3, requires_grad=True)])
    assert not fused_adamw_applies([torch.zeros(3, device="meta")])
    assert not fused_adamw_applies([torch.zeros(3), torch.zeros(3, device="meta")])
    meta = torch.nn.Linear(3, 3, device="meta")
    assert not adamw([meta], 1e-3, 0.0).defaults["fused"]
    # a generator is read once, not exhausted by the device check; a plain list of tensors (the peer comparison's)
    assert not fused_adamw_applies(p for p in [torch.zeros(3), torch.zeros(3, dtype=torch.long)])
    assert build_adamw([torch.nn.Parameter(torch.zeros(3))], lr=1e-3, weight_decay=0.01).defaults["fused"]


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
                                           monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
                                           precision: str, dtype: torch.dtype) -> None:
    """bf16 is honoured on a CPU, and on one without a fast bf16 path the run says so (stderr) and still runs."""
    import kdray.run_setup as run_setup
    import kdray.training as training
    from conftest import rte_run
    from kdray.distill import train

    monkeypatch.setattr(training, "bf16_is_slow_here", lambda device: True)  # as on an AVX2-only CPU

    seen: list[torch.dtype] = []
    real = run_setup.load_teacher

    def spied(path, spec, **kw):  # the teacher's logits show the autocast its forward ran under
        model = real(path, spec, **kw)
        # a hook on the head sees the logits of the model's forward and of kdray.top_layer's alike
        model.classifier.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        return model

    monkeypatch.setattr(run_setup, "load_teacher", spied)
    config = rte_run(glue_dir, tmp_path / precision, **{"selector.name": "vanilla_kd", "train.max_steps": 2,
                                                      "train.precision": precision})
    result = train(config, teacher_path=tiny_teacher)
    assert seen and set(seen) == {dtype}
    assert result.train_steps == 2 and math.isfinite(result.dev_score)
    warned = "train.precision: bf16 on this CPU" in capfd.readouterr().err
    assert warned == (precision == "bf16")


def test_slow_bf16_is_named_before_a_local_sweep_starts(glue_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    """An AVX2-only CPU ran a bf16 matmul at 0.8 GFLOP/s against 70 in fp32: a bf16 study there would crawl,
    so a local sweep names the keys and the fix before Ray starts; fp32, GPU runs and a cluster driver are quiet."""
    import yaml

    import kdray.training as training
    from kdray.config import TrainConfig
    from kdray.sweep.run import run_sweep

    assert training.bf16_is_slow_here(torch.device("cuda")) is False  # a GPU has its own bf16
    assert isinstance(training.bf16_is_slow_here(torch.device("cpu")), bool)  # torch's own query, here
    monkeypatch.setattr(training, "bf16_is_slow_here", lambda device: True)
    both = training.slow_bf16_warning([TrainConfig(precision="bf16"), TrainConfig(teacher_precision="bf16")],
                                      torch.device("cpu"))
    assert both and "train.precision and train.teacher_precision" in both and "--set train.precision=fp32" in both
    assert training.slow_bf16_warning([TrainConfig(precision="fp32")], torch.device("cpu")) is None
    doc = {"name": "p", "tasks": ["rte"], "data": {"source": "local", "dir": str(glue_dir), "max_train_samples": 32},
           "teacher": {"model": "tiny-bert", "epochs": 1}, "train": {"max_steps": 2, "precision": "bf16"},
           "search": {"mode": "grid", "space": {"selector.name": {"grid": ["finetune"]}}}}
    space = tmp_path / "p.yaml"
    space.write_text(yaml.safe_dump(doc))
    for overrides, address, expected in [(None, None, True), ({"train.precision": "fp32"}, None, False),
                                         ({"resources.use_gpu": True}, None, False), (None, "auto", False)]:
        assert run_sweep(str(space), address=address, storage=str(tmp_path / "runs"), dry_run=True,
                         overrides=overrides) == 0
        assert ("bf16 on this CPU" in capfd.readouterr().err) == expected, (overrides, address)


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
