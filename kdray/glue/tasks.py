"""The GLUE tasks for the data layer: their specs (declared once in :mod:`kdray.registry`) and lookup by name."""

from __future__ import annotations

from kdray.registry import TASKS, TaskSpec

__all__ = ["TASKS", "GlueDataError", "TaskSpec", "get_task"]


class GlueDataError(ValueError):
    """Bad or missing GLUE data; the message names the file (or task) and what is wrong."""


def get_task(name: str) -> TaskSpec:
    """The spec of ``name`` (case-insensitive; ``sst-2``/``sts-b`` accepted)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise GlueDataError(f"unknown GLUE task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]
