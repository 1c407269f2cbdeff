"""Where kdray keeps reusable artefacts (tokenized data, tiny models, teachers, teacher outputs)."""

from __future__ import annotations

import os
from pathlib import Path

# Kept importable here for the callers that still use it; the one lock is kdray.io.locked.
from kdray.io import locked

__all__ = ["cache_root", "glue_dir_from_env", "locked"]


def cache_root() -> Path:
    """``$KDRAY_CACHE_DIR`` or ``~/.cache/kdray``: read here once so no other module touches the environment."""
    root = Path(os.environ.get("KDRAY_CACHE_DIR") or Path.home() / ".cache" / "kdray")
    root.mkdir(parents=True, exist_ok=True)
    return root


def glue_dir_from_env() -> Path | None:
    """``$KDRAY_GLUE_DIR`` if set: the default folder of the official GLUE TSV layout."""
    value = os.environ.get("KDRAY_GLUE_DIR")
    return Path(value) if value else None
