"""From raw GLUE splits to tokenized, cached train / reward-set holdout / dev sets.

Row selection is deterministic and independent of the run seed by default
(``data.subsample_seed``), so every method and seed of a comparison sees the
same rows. The holdout (the actor-critic's reward set) is carved off the full
train split before any subsampling, with a fixed seed, so it never changes
with ``max_train_samples``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from kdray.config import DataConfig
from kdray.glue.loading import load_task
from kdray.glue.tasks import TaskSpec, get_task
from kdray.io import atomic_folder, short_hash
from kdray.paths import cache_root

HOLDOUT_SEED = 20220  # fixed: the reward set is the same slice for every trial
_CACHE_VERSION = 2  # bump when the tokenized layout changes (v2: content-hashed tokenizer key, idx column)


@dataclass
class PreparedData:
    """Tokenized splits with columns input_ids, attention_mask, token_type_ids, labels, length and idx.

    Python format on purpose: the loop picks rows by index and :func:`make_collator`
    builds the tensors, so no per-row torch conversion is paid twice. ``idx`` is the
    row's index in the raw split, so the train/holdout/dev rows can always be traced.
    """

    spec: TaskSpec
    train: datasets.Dataset
    holdout: datasets.Dataset
    dev: dict[str, datasets.Dataset]


def select_rows(n_rows: int, data: DataConfig, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(train row ids, holdout row ids) of a train split of ``n_rows`` rows.

    Holdout: ``min(holdout_fraction * n, holdout_max)`` rows (at least 1) from a fixed permutation.
    Train: the rest, subsampled to ``max_train_samples`` with ``seed`` (original order kept).
    """
    perm = np.random.default_rng(HOLDOUT_SEED).permutation(n_rows)
    n_hold = max(1, min(int(data.holdout_fraction * n_rows), data.holdout_max)) if n_rows > 1 else 0
    holdout, rest = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    if data.max_train_samples is not None and data.max_train_samples < len(rest):
        rest = np.sort(np.random.default_rng(seed).choice(rest, data.max_train_samples, replace=False))
    return rest, holdout


def subsample_eval(n_rows: int, max_rows: int | None, seed: int | None) -> np.ndarray:
    """Row ids of a dev split: all rows, or ``max_rows`` of them drawn with ``seed`` (original order kept)."""
    if max_rows is None or max_rows >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, max_rows, replace=False))


def prepare_data(
    task: str, tokenizer: PreTrainedTokenizerBase, data: DataConfig, max_seq_length: int, seed: int
) -> PreparedData:
    """Load, select rows, tokenize (cached on disk) and return the splits a run needs.

    Args:
        task: GLUE task name.
        tokenizer: the (fast) tokenizer of the teacher/student; its content hash keys the cache.
        data: source, folder, subsample sizes, holdout size and cache folder
            (default ``cache_root()/"tokenized"``).
        max_seq_length: truncation length (no padding here: :func:`make_collator` pads per batch).
        seed: the run's seed; it picks the subsample only when ``data.subsample_seed`` is null.

    Returns:
        PreparedData with ``train`` (subsampled, holdout removed), ``holdout`` (the reward set,
        independent of ``max_train_samples``) and one ``dev`` dataset per dev split.
    """
    spec = get_task(task)
    raw = load_task(task, source=data.source, data_dir=data.dir)
    sub_seed = data.subsample_seed if data.subsample_seed is not None else seed
    train_ids, hold_ids = select_rows(len(raw["train"]), data, sub_seed)
    cache = Path(data.cache_dir).expanduser() if data.cache_dir else cache_root() / "tokenized"
    tok_key = tokenizer_fingerprint(tokenizer)

    def tokenized(split: str, ids: np.ndarray) -> datasets.Dataset:
        # The raw split's fingerprint hashes its content (local TSV or hub files alike), and the row ids
        # hash captures every subsample/holdout parameter, so equal keys mean equal tokenized rows.
        key_parts = {"version": _CACHE_VERSION, "tokenizer": tok_key, "task": task, "split": split,
                     "max_seq_length": max_seq_length, "raw": raw[split]._fingerprint,
                     "rows": short_hash(np.asarray(ids, dtype=np.int64).tobytes(), length=64)}
        key = short_hash(key_parts, length=24)
        folder = cache / f"{task}-{split}-{max_seq_length}-{key}"
        if not (folder / "dataset_info.json").is_file():
            rows = raw[split].select(ids.tolist())
            ds = tokenize_split(rows, spec, tokenizer, max_seq_length)
            meta = {**key_parts, "tokenizer_name": str(getattr(tokenizer, "name_or_path", "")),
                    "num_rows": len(ds), "max_train_samples": data.max_train_samples,
                    "max_eval_samples": data.max_eval_samples, "holdout_fraction": data.holdout_fraction,
                    "holdout_max": data.holdout_max, "subsample_seed": sub_seed}
            _save_atomically(ds, folder, meta)
        return datasets.load_from_disk(str(folder))

    dev_max = data.max_eval_samples
    return PreparedData(
        spec=spec,
        train=tokenized("train", train_ids),
        holdout=tokenized("train", hold_ids),
        dev={s: tokenized(s, subsample_eval(len(raw[s]), dev_max, sub_seed)) for s in spec.dev_splits},
    )


def tokenize_split(rows: datasets.Dataset, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_len: int) -> datasets.Dataset:
    """Tokenize without padding (the collator pads each batch to its own longest row)."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [batch[k] for k in spec.text_keys]
        enc = dict(tokenizer(*texts, truncation=True, max_length=max_len, padding=False))
        enc["labels"] = [float(x) for x in batch["label"]] if spec.is_regression else [int(x) for x in batch["label"]]
        enc["length"] = [len(ids) for ids in enc["input_ids"]]  # no padding yet: every token counts
        enc["idx"] = [int(i) for i in batch["idx"]]
        return enc

    # keep_in_memory: the result is saved once by the caller; no second copy in the datasets cache.
    return rows.map(encode, batched=True, batch_size=1000, remove_columns=rows.column_names, load_from_cache_file=False,
                    keep_in_memory=True, desc=f"tokenize {spec.name}")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of a tokenizer for cache keys: class, vocab size and a hash of what decides the ids.

    A fast tokenizer is hashed through its full serialisation (vocab with ids, normaliser such as
    lowercasing, pre-tokeniser, special-token template), a slow one through its sorted vocab items.
    The name/path is left out on purpose: a teacher folder that saved the same tokenizer shares
    the cache instead of re-tokenizing; the cache folder's meta.json still records it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Drop the per-call truncation/padding state: every tokenizer call rewrites it.
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        payload = json.dumps(state, sort_keys=True)
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items())) + str(getattr(tokenizer, "do_lower_case", ""))
    digest = short_hash(payload, length=16)
    truncation = getattr(tokenizer, "truncation_side", "right")
    return f"{type(tokenizer).__name__}-{len(tokenizer)}-{digest}-trunc_{truncation}"


def _save_atomically(ds: datasets.Dataset, folder: Path, meta: dict[str, Any]) -> None:
    """Build the entry in a temp folder beside ``folder`` and rename it: readers never see half a cache entry,
    and of two concurrent builders of the same (deterministic) entry, the first rename wins."""
    with atomic_folder(folder) as tmp:
        ds.save_to_disk(str(tmp))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))


def make_collator(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Pad a list of tokenized rows to the longest one in the batch (dynamic padding).

    Returns LongTensors ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer
    makes them) and ``labels`` (float32 for regression, i.e. STS-B). Other columns (``length``,
    ``idx``) are bookkeeping and not passed to the model.
    """
    pad_id = int(tokenizer.pad_token_id or 0)

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        out: dict[str, torch.Tensor] = {}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in rows[0]:
                out[key] = torch.tensor([[int(t) for t in r[key]] + [fill] * (width - len(r[key])) for r in rows],
                                        dtype=torch.long)
        labels = torch.as_tensor([float(r["labels"]) for r in rows])
        first = rows[0]["labels"]
        regression = isinstance(first, (float, np.floating)) or (isinstance(first, torch.Tensor) and first.is_floating_point())
        out["labels"] = labels.float() if regression else labels.long()
        return out

    return collate
