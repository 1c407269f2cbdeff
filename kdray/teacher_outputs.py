"""Teacher-output cache: run the teacher over the training set once, then distil without it.

Stored per example, unpadded, in fp16: logits ``[N, C]`` and, for each cached hidden-state
layer, one flat ``[sum(lengths), H]`` memory-mapped array with ``offsets[N+1]`` row starts.
The folder is keyed by teacher, task, max length, layers and the training rows, and is
built in a temp folder then renamed (atomic; concurrent trials reuse it). Attentions are
not cached (``heads x T x T`` per layer is too big): the ``attention`` kind falls back to a
live teacher forward, as does any layer not in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from kdray.knowledge import ModelOutputs, run_model


def cache_key(parts: dict[str, Any]) -> str:
    """Stable short hash of what determines the cached values."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TeacherOutputCache:
    """Read side: teacher outputs of training rows, padded to the batch's length on request."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.layers: frozenset[int] = frozenset(int(x) for x in meta["layers"])
        self.num_rows = int(meta["num_rows"])
        self.logits = np.load(self.folder / "logits.npy", mmap_mode="r")
        self.offsets = np.load(self.folder / "offsets.npy")
        self.hidden = {l: np.load(self.folder / f"hidden_{l}.npy", mmap_mode="r") for l in self.layers}

    def covers(self, hidden: frozenset[int] | set[int], attentions: frozenset[int] | set[int]) -> bool:
        """Whether a step's teacher needs can be served without a live forward."""
        return not attentions and set(hidden) <= self.layers

    def outputs(
        self, rows: Sequence[int], seq_len: int, hidden: frozenset[int] | set[int], device: torch.device
    ) -> ModelOutputs:
        """Cached outputs of ``rows`` (zero-padded to ``seq_len``), as float32 on ``device``.

        Rows are gathered in fp16 and widened on ``device``: half the bytes through host memory and over PCIe,
        and on a GPU the cast runs there instead of on the host.
        """
        idx = np.asarray(rows, dtype=np.int64)
        logits = torch.from_numpy(np.ascontiguousarray(self.logits[idx])).to(device).float()
        states: dict[int, torch.Tensor] = {}
        for layer in sorted(hidden):
            flat = self.hidden[layer]
            out = np.zeros((len(idx), seq_len, flat.shape[1]), dtype=flat.dtype)
            for i, r in enumerate(idx):
                start, end = int(self.offsets[r]), int(self.offsets[r + 1])
                n = min(end - start, seq_len)
                out[i, :n] = flat[start : start + n]
            states[layer] = torch.from_numpy(out).to(device, non_blocking=True).float()
        return ModelOutputs(logits=logits, hidden=states)


@torch.no_grad()
def build_teacher_cache(
    teacher: nn.Module,
    dataset: Any,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    layers: set[int],
    folder: str | Path,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> TeacherOutputCache:
    """Compute and store the teacher outputs of every row of ``dataset`` (unless already there)."""
    folder = Path(folder)
    if (folder / "meta.json").is_file():
        return TeacherOutputCache(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    teacher.eval()
    n = len(dataset)
    logits: list[np.ndarray] = []
    chunks: dict[int, list[np.ndarray]] = {l: [] for l in layers}
    lengths: list[int] = []
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = run_model(teacher, batch, set(layers))
        lens = batch["attention_mask"].sum(1).tolist()
        logits.append(out.logits.float().cpu().numpy().astype(np.float16))
        for l in layers:
            h = out.hidden[l].float().cpu().numpy().astype(np.float16)
            chunks[l].extend(h[i, :ln] for i, ln in enumerate(lens))
        lengths.extend(int(x) for x in lens)
    np.save(tmp / "logits.npy", np.concatenate(logits))
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    for l in layers:
        np.save(tmp / f"hidden_{l}.npy", np.concatenate(chunks[l]))
    (tmp / "meta.json").write_text(json.dumps({"layers": sorted(layers), "num_rows": n}))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return TeacherOutputCache(folder)
