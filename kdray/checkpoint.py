"""Checkpoint files and RNG states: everything a run needs to continue bit-for-bit on CPU.

A checkpoint is :meth:`kdray.state.TrainingState.state_dict`, written with
:func:`kdray.io.atomic_torch_save` (a crash never leaves half of one) to ``<output_dir>/checkpoint/checkpoint.pt``
and read back with ``weights_only=True`` (no pickled code runs).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdray.io import atomic_torch_save

CHECKPOINT_DIR, CHECKPOINT_FILE = "checkpoint", "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) generator states, as tensors / plain containers."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[int(x) if isinstance(x, (int, np.integer)) else float(x) for x in np_state[2:]]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def path_in(output_dir: str | Path) -> Path:
    """Where a run keeps its checkpoint."""
    return Path(output_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def save(state: dict[str, Any], output_dir: str | Path) -> Path:
    """Write a run's checkpoint atomically and durably."""
    return atomic_torch_save(state, path_in(output_dir))


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without running pickled code (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
