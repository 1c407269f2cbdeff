"""Where kdray keeps reusable artefacts (tokenized data, tiny models, teachers, teacher outputs)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    """``$KDRAY_CACHE_DIR`` or ``~/.cache/kdray``: read here once so no other module touches the environment."""
    root = Path(os.environ.get("KDRAY_CACHE_DIR") or Path.home() / ".cache" / "kdray")
    root.mkdir(parents=True, exist_ok=True)
    return root


def glue_dir_from_env() -> Path | None:
    """``$KDRAY_GLUE_DIR`` if set: the default folder of the official GLUE TSV layout."""
    value = os.environ.get("KDRAY_GLUE_DIR")
    return Path(value) if value else None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock file, so concurrent trials wait for one build (a teacher, a teacher-output cache)
    instead of each doing the same work."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
