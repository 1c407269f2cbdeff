"""GLUE for kdray: task specs, local/hub loading, official metrics, tokenized and cached splits."""

from kdray.glue.loading import describe_tasks, load_task
from kdray.glue.metrics import compute_metrics, primary_score
from kdray.glue.prepare import PreparedData, make_collator, prepare_data, select_rows, tokenizer_fingerprint
from kdray.glue.tasks import TASKS, GlueDataError, TaskSpec, get_task

__all__ = [
    "TASKS",
    "GlueDataError",
    "PreparedData",
    "TaskSpec",
    "compute_metrics",
    "describe_tasks",
    "get_task",
    "load_task",
    "make_collator",
    "prepare_data",
    "primary_score",
    "select_rows",
    "tokenizer_fingerprint",
]
