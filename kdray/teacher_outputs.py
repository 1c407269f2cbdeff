"""Teacher-output cache: run the teacher over the training set once, then distil without it.

Stored per example, unpadded, in fp16: logits ``[N, C]`` and, for each cached hidden-state
layer, one flat ``[sum(lengths), H]`` memory-mapped array with ``offsets[N+1]`` row starts.
Attention maps of the cached attention layers are stored the same way, each row's
``[heads, n, n]`` block over its n real tokens flattened into one flat array per layer with
``attention_offsets[N+1]``: ``heads·n²`` values a row, so their size grows with the square of
the rows' lengths (``attention_bytes`` estimates it before a build, and the caller decides).
The folder is keyed by teacher, task, max length, layers and the training rows, and is
built in a temp folder then renamed (atomic; concurrent trials reuse it). A step whose
needs the cache does not cover (an uncached layer or attention map) runs the live teacher.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from kdray.io import atomic_folder, locked, short_hash
from kdray.knowledge import ModelOutputs, run_model
from kdray.knowledge.relation import chain_fsp_sq
from kdray.loop_data import longest_first_batches


#: per row, the relation loss's teacher-only term for each pair of :func:`fsp_pairs` (``[rows, pairs]`` fp32)
FSP_FILE = "fsp_sq.npy"


def cache_key(parts: dict[str, Any]) -> str:
    """Stable short hash of what determines the cached values (sha256, 16 hex digits: existing caches' names)."""
    return short_hash(parts, 16)


class TeacherOutputCache:
    """Read side: teacher outputs of training rows, padded to the batch's length on request.

    The arrays stay memory-mapped on the host unless :meth:`keep_on` moves them to an accelerator once;
    there a batch is one vectorised gather per layer, with no host work and no copy over PCIe.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.layers: frozenset[int] = frozenset(int(x) for x in meta["layers"])
        self.num_rows = int(meta["num_rows"])
        self.logits = np.load(self.folder / "logits.npy", mmap_mode="r")
        self.offsets = np.load(self.folder / "offsets.npy")
        self.lengths = self.offsets[1:] - self.offsets[:-1]
        self.hidden = {l: np.load(self.folder / f"hidden_{l}.npy", mmap_mode="r") for l in self.layers}
        # caches built before attention maps were cached have no such keys: they cover no attention layer
        self.attention_layers: frozenset[int] = frozenset(int(x) for x in meta.get("attention_layers", []))
        self.heads = int(meta.get("heads", 0))
        self.attention = {l: np.load(self.folder / f"attention_{l}.npy", mmap_mode="r") for l in self.attention_layers}
        self.attention_offsets = (np.load(self.folder / "attention_offsets.npy") if self.attention_layers
                                  else np.zeros(self.num_rows + 1, dtype=np.int64))
        # caches built before the relation term was cached have no fsp_sq.npy: every step computes it
        stored = (self.folder / FSP_FILE).is_file()
        self.fsp_pairs: list[tuple[int, int]] = fsp_pairs(self.layers) if stored else []
        self.fsp_sq = np.load(self.folder / FSP_FILE) if stored else np.zeros((self.num_rows, 0), np.float32)
        self.resident: dict[str, torch.Tensor] = {}  # name -> tensor on the device given to keep_on

    @property
    def nbytes(self) -> int:
        arrays = [self.logits, self.offsets, self.attention_offsets, self.fsp_sq, *self.hidden.values(),
                  *self.attention.values()]
        return int(sum(a.nbytes for a in arrays))

    def keep_on(self, device: torch.device, max_fraction: float = 0.3) -> bool:
        """Copy the cache to an accelerator once if it fits in ``max_fraction`` of its free memory.

        A GPU step is a few milliseconds: gathering rows on the host and copying them over PCIe every step
        would cost more than the step (measured 3.1x the plain step on an H100). On the CPU the memory map
        already is the resident copy, so this does nothing there.
        """
        if device.type != "cuda" or self.resident:
            return bool(self.resident)
        free, _ = torch.cuda.mem_get_info(device)
        if self.nbytes > max_fraction * free:
            return False
        self.load_to(device)
        return True

    def load_to(self, device: torch.device) -> None:
        """Copy every array to ``device`` (fp16 kept); later batches gather there."""
        # attention blocks are sliced by host offsets (``_attention``), so only the maps themselves move
        arrays = {"logits": self.logits, "offsets": self.offsets, "fsp_sq": self.fsp_sq,
                  **{f"hidden_{l}": h for l, h in self.hidden.items()},
                  **{f"attention_{l}": a for l, a in self.attention.items()}}
        # np.array copies the read-only memory map into writable host memory, which torch can wrap
        self.resident = {name: torch.from_numpy(np.array(a)).to(device) for name, a in arrays.items()}

    def covers(self, hidden: frozenset[int] | set[int], attentions: frozenset[int] | set[int]) -> bool:
        """Whether a step's teacher needs can be served without a live forward."""
        return set(hidden) <= self.layers and set(attentions) <= self.attention_layers

    def outputs(
        self, rows: Sequence[int], seq_len: int, hidden: frozenset[int] | set[int], device: torch.device,
        attentions: frozenset[int] | set[int] = frozenset(),
    ) -> ModelOutputs:
        """Cached outputs of ``rows`` (zero-padded to ``seq_len``), as float32 on ``device``.

        Rows are gathered in fp16 and widened on ``device``: half the bytes through host memory and over PCIe,
        and on a GPU the cast runs there instead of on the host. Attention maps are zero outside each row's
        real ``n x n`` block (where a live forward has the padded queries' rows; the ``attention`` kind masks
        both, so its loss is the live one's).
        """
        maps = {layer: self._attention(rows, seq_len, layer, device) for layer in sorted(attentions)}
        fsp = self._fsp_sq(rows, seq_len, hidden, device)
        if self.resident:
            return replace(self._outputs_resident(rows, seq_len, hidden, device), attentions=maps, fsp_sq=fsp)
        idx = np.asarray(rows, dtype=np.int64)
        logits = torch.from_numpy(np.ascontiguousarray(self.logits[idx])).to(device).float()
        states: dict[int, torch.Tensor] = {}
        for layer in sorted(hidden):
            # one contiguous slice copy per row: on the host no slower than a per-token fancy index
            # (32 rows x 4 MiniLM layers: 2.4 against 2.6 ms, 2-core CPU)
            flat = self.hidden[layer]
            out = np.zeros((len(idx), seq_len, flat.shape[1]), dtype=flat.dtype)
            for i, r in enumerate(idx):
                start, end = int(self.offsets[r]), int(self.offsets[r + 1])
                n = min(end - start, seq_len)
                out[i, :n] = flat[start : start + n]
            states[layer] = torch.from_numpy(out).to(device, non_blocking=True).float()
        return ModelOutputs(logits=logits, hidden=states, attentions=maps, fsp_sq=fsp)

    def _fsp_sq(self, rows: Sequence[int], seq_len: int, hidden: frozenset[int] | set[int],
                device: torch.device) -> dict[tuple[int, int], torch.Tensor]:
        """The stored teacher-only relation terms of ``rows`` for the pairs whose layers are asked; none when a
        row is longer than ``seq_len`` (its states are cut there, so its stored term is not this batch's)."""
        pairs = [(p, pair) for p, pair in enumerate(self.fsp_pairs) if set(pair) <= set(hidden)]
        if not pairs or int(self.lengths[list(rows)].max(initial=0)) > seq_len:
            return {}
        resident = self.resident.get("fsp_sq")
        if resident is not None:
            picked = resident[torch.as_tensor(rows, dtype=torch.long, device=resident.device)]
        else:
            picked = torch.from_numpy(np.ascontiguousarray(self.fsp_sq[np.asarray(rows, dtype=np.int64)]))
        return {pair: picked[:, p].to(device) for p, pair in pairs}

    def _attention(self, rows: Sequence[int], seq_len: int, layer: int, device: torch.device) -> torch.Tensor:
        """``[B, heads, seq_len, seq_len]`` maps of ``rows`` at ``layer``: each row's block, zero elsewhere.

        Blocks differ in size, so this is one slice copy per row (a memory map on the host, the resident
        tensor on an accelerator): 32 rows are 32 copies, no padding stored or moved.
        """
        resident = self.resident.get(f"attention_{layer}")
        flat = resident if resident is not None else self.attention[layer]
        out = torch.zeros(len(rows), self.heads, seq_len, seq_len, dtype=torch.float16,
                          device=resident.device if resident is not None else "cpu")
        for i, r in enumerate(rows):
            start, end = int(self.attention_offsets[r]), int(self.attention_offsets[r + 1])
            n = math.isqrt((end - start) // self.heads)
            block = flat[start:end]
            block = block if resident is not None else torch.from_numpy(np.array(block))  # a copy: the map is read-only
            m = min(n, seq_len)
            out[i, :, :m, :m] = block.view(self.heads, n, n)[:, :m, :m]
        return out.to(device, non_blocking=True).float()

    def _outputs_resident(
        self, rows: Sequence[int], seq_len: int, hidden: frozenset[int] | set[int], device: torch.device
    ) -> ModelOutputs:
        r = self.resident
        idx = torch.as_tensor(rows, dtype=torch.long, device=r["offsets"].device)
        starts = r["offsets"][idx]
        lengths = (r["offsets"][idx + 1] - starts).clamp(max=seq_len)
        pos = torch.arange(seq_len, device=idx.device)
        valid = pos[None, :] < lengths[:, None]
        flat_index = torch.where(valid, starts[:, None] + pos[None, :], 0)
        states = {}
        for layer in sorted(hidden):
            out = r[f"hidden_{layer}"][flat_index.reshape(-1)].reshape(len(rows), seq_len, -1)
            states[layer] = out.masked_fill(~valid[..., None], 0).to(device).float()
        return ModelOutputs(logits=r["logits"][idx].to(device).float(), hidden=states)


def real_lengths(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Each row's number of real tokens (its attention mask's sum; all of its tokens without one)."""
    def length(row: dict[str, Any]) -> int:
        mask = row.get("attention_mask")
        if mask is None:
            return len(row["input_ids"])
        return int(mask.sum()) if hasattr(mask, "sum") else int(sum(mask))  # tensors, or a dataset's lists

    return [length(r) for r in rows]


def attention_bytes(lengths: Sequence[int], heads: int, layers: int) -> int:
    """Bytes the fp16 attention maps of ``layers`` layers take for rows of these lengths (``heads·n²`` each)."""
    return 2 * heads * layers * sum(n * n for n in lengths)


def fsp_pairs(layers: set[int] | frozenset[int]) -> list[tuple[int, int]]:
    """Consecutive pairs of the cached hidden layers: the relation chain's teacher pairs when the cache holds
    exactly the chain's layers (a pool's feature and relation kinds share the layer map, so it does)."""
    ordered = sorted(layers)
    return list(zip(ordered, ordered[1:]))


def batch_fsp_sq(hidden: dict[int, torch.Tensor], attention_mask: torch.Tensor, chain: list[int]) -> np.ndarray:
    """``[B, len(chain) - 1]`` fp32 relation teacher-only terms of one build batch, for the consecutive pairs of
    ``chain`` (:func:`fsp_pairs`), from its states rounded to the fp16 the cache stores (so they are the terms
    of the stored states) and masked to each row's real tokens."""
    mask = attention_mask.float().unsqueeze(-1)
    terms = chain_fsp_sq([hidden[layer].half().float() * mask for layer in chain])
    return torch.stack(terms, dim=1).cpu().numpy()


@torch.no_grad()
def build_teacher_cache(
    teacher: nn.Module,
    dataset: Any,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    layers: set[int],
    folder: str | Path,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    attention_layers: set[int] | frozenset[int] = frozenset(),
) -> TeacherOutputCache:
    """Compute and store the teacher outputs of every row of ``dataset`` (unless already there).

    ``attention_layers`` (1-based encoder layers) adds their attention maps; the teacher must then run an
    attention kernel that returns them (eager). Concurrent trials that need the same cache wait on a lock for
    the first one's build instead of each building it (three RTE trials of one sweep did). Batches are formed
    in length order, so the teacher pads each batch only to lengths close to its own rows; rows are stored in
    dataset order.
    """
    folder = Path(folder)
    with locked(folder.with_name(f".{folder.name}.lock")):
        if not (folder / "meta.json").is_file():
            _build(teacher, dataset, collate, layers, set(attention_layers), folder, batch_size, device)
    return TeacherOutputCache(folder)


def _build(teacher: nn.Module, dataset: Any, collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
           layers: set[int], attention_layers: set[int], folder: Path, batch_size: int,
           device: torch.device | str) -> None:
    teacher.eval()
    rows = [dataset[i] for i in range(len(dataset))]
    lengths = real_lengths(rows)
    heads = int(teacher.config.num_attention_heads) if attention_layers else 0
    attention_offsets = np.concatenate([[0], np.cumsum([heads * n * n for n in lengths])]).astype(np.int64)
    logits: list[np.ndarray | None] = [None] * len(rows)
    states: dict[int, list[np.ndarray | None]] = {l: [None] * len(rows) for l in layers}
    chain = sorted(layers)  # the relation term's pairs (fsp_pairs): consecutive cached layers
    fsp = np.zeros((len(rows), max(len(chain) - 1, 0)), dtype=np.float32)
    with atomic_folder(folder) as tmp:  # a rebuildable cache: the folder's rename is what must be atomic
        # attention maps go straight to disk: they can be far larger than the hidden states kept in memory
        maps = {l: np.lib.format.open_memmap(tmp / f"attention_{l}.npy", mode="w+", dtype=np.float16,
                                             shape=(int(attention_offsets[-1]),)) for l in attention_layers}
        for chunk in longest_first_batches(rows, batch_size):
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in chunk]).items()}
            out = run_model(teacher, batch, set(layers), attention_layers)
            lens = batch["attention_mask"].sum(1).tolist()
            if [int(n) for n in lens] != [lengths[i] for i in chunk]:
                raise ValueError("collate changed the rows' real lengths; the cache stores each row's own tokens")
            if fsp.shape[1]:
                fsp[chunk] = batch_fsp_sq(out.hidden, batch["attention_mask"], chain)
            chunk_logits = out.logits.float().cpu().numpy().astype(np.float16)
            hidden = {l: out.hidden[l].float().cpu().numpy().astype(np.float16) for l in layers}
            attn = {l: out.attentions[l].float().cpu().numpy().astype(np.float16) for l in attention_layers}
            for j, i in enumerate(chunk):
                n = lengths[i]
                logits[i] = chunk_logits[j]
                for l in layers:
                    states[l][i] = hidden[l][j, :n]
                for l in attention_layers:
                    maps[l][attention_offsets[i] : attention_offsets[i + 1]] = attn[l][j, :, :n, :n].reshape(-1)
        for m in maps.values():
            m.flush()
        del maps
        np.save(tmp / "logits.npy", np.stack(logits))
        np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        for l in layers:
            np.save(tmp / f"hidden_{l}.npy", np.concatenate(states[l]))
        if fsp.shape[1]:
            np.save(tmp / FSP_FILE, fsp)
        meta: dict[str, Any] = {"layers": sorted(layers), "num_rows": len(rows)}
        if attention_layers:
            np.save(tmp / "attention_offsets.npy", attention_offsets)
            meta.update(attention_layers=sorted(attention_layers), heads=heads)
        (tmp / "meta.json").write_text(json.dumps(meta))
