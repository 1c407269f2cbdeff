"""From raw GLUE splits to tokenized, cached train / reward-set holdout / dev sets.

Row selection is deterministic and independent of the run seed by default
(``data.subsample_seed``), so every method and seed of a comparison sees the
same rows. The holdout (the actor-critic's reward set) is carved off the full
train split before any subsampling, with a fixed seed, so it never changes
with ``max_train_samples``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
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
from kdray.paths import cache_root

HOLDOUT_SEED = 20220  # fixed: the reward set is the same slice for every trial
_CACHE_VERSION = 1


@dataclass
class PreparedData:
    """Tokenized splits (python format, columns input_ids, attention_mask, token_type_ids, labels, length)."""

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
    if max_rows is None or max_rows >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, max_rows, replace=False))


def prepare_data(
    task: str, tokenizer: PreTrainedTokenizerBase, data: DataConfig, max_seq_length: int, seed: int
) -> PreparedData:
    """Load, select rows, tokenize (cached on disk) and return the splits a run needs.

    ``seed`` is the run's seed; it picks the subsample only when ``data.subsample_seed`` is null.
    """
    spec = get_task(task)
    raw = load_task(task, source=data.source, data_dir=data.dir)
    sub_seed = data.subsample_seed if data.subsample_seed is not None else seed
    train_ids, hold_ids = select_rows(len(raw["train"]), data, sub_seed)
    cache = Path(data.cache_dir).expanduser() if data.cache_dir else cache_root() / "tokenized"
    tok_key = tokenizer_fingerprint(tokenizer)

    def tokenized(split: str, ids: np.ndarray) -> datasets.Dataset:
        key = hashlib.sha256(
            json.dumps([_CACHE_VERSION, tok_key, task, split, max_seq_length, data.source, str(data.dir),
                        raw[split]._fingerprint, hashlib.sha256(ids.tobytes()).hexdigest()]).encode()
        ).hexdigest()[:24]
        folder = cache / f"{task}-{split}-{max_seq_length}-{key}"
        if folder.is_dir():
            return datasets.load_from_disk(str(folder))
        rows = raw[split].select(ids.tolist())
        ds = tokenize_split(rows, spec, tokenizer, max_seq_length)
        _save_atomically(ds, folder)
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
        enc = tokenizer(*texts, truncation=True, max_length=max_len, padding=False)
        enc["labels"] = [float(x) for x in batch["label"]] if spec.is_regression else [int(x) for x in batch["label"]]
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return dict(enc)

    return rows.map(encode, batched=True, batch_size=1000, remove_columns=rows.column_names, load_from_cache_file=False,
                    desc=f"tokenize {spec.name}")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of a tokenizer for cache keys: class, vocabulary hash and lowercasing."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256("\n".join(sorted(vocab)).encode()).hexdigest()[:16]
    return f"{type(tokenizer).__name__}-{len(vocab)}-{digest}-{getattr(tokenizer, 'do_lower_case', '')}"


def _save_atomically(ds: datasets.Dataset, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        ds.save_to_disk(str(tmp))
        os.replace(tmp, folder)
    except OSError:
        if not folder.is_dir():  # a concurrent writer did not win either: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_collator(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Pad a list of tokenized rows to the longest one; labels stay float for regression."""
    pad_id = int(tokenizer.pad_token_id or 0)

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        out: dict[str, torch.Tensor] = {}
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in rows[0]:
                out[key] = torch.tensor([list(r[key]) + [fill] * (width - len(r[key])) for r in rows], dtype=torch.long)
        labels = [r["labels"] for r in rows]
        out["labels"] = torch.tensor(labels, dtype=torch.float if isinstance(labels[0], float) else torch.long)
        return out

    return collate
