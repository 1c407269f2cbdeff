"""GLUE for kdray: task specs, local/hub loading, official metrics, tokenized and cached splits.

Names are imported on first use (PEP 562): ``kdray tasks`` and the task specs need neither ``datasets`` nor
``torch``, which take seconds to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "describe_tasks": "catalog", "load_task": "loading",
    "compute_metrics": "metrics", "primary_score": "metrics",
    "PreparedData": "prepare", "make_collator": "prepare", "prepare_data": "prepare", "select_rows": "prepare",
    "tokenizer_fingerprint": "prepare",
    "TASKS": "tasks", "GlueDataError": "tasks", "TaskSpec": "tasks", "get_task": "tasks",
}

__all__ = ["TASKS", "GlueDataError", "PreparedData", "TaskSpec", "compute_metrics", "describe_tasks", "get_task",
           "load_task", "make_collator", "prepare_data", "primary_score", "select_rows", "tokenizer_fingerprint"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'kdray.glue' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kdray.glue.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
