"""How the tables name and order tasks and methods (``kdray report``, ``kdray.paired``): GLUE order, the
registry's method order, and each task's official metric(s) in its column header."""

from __future__ import annotations

from kdray.registry import METHODS, TASKS

TASK_ORDER: tuple[str, ...] = tuple(TASKS)
TASK_LABELS: dict[str, str] = {name: spec.label for name, spec in TASKS.items()}
# The official metric(s) shown per task, as (label, dev_metrics key); dev_score is their mean.
TASK_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "cola": (("mcc", "matthews_correlation"),),
    "mrpc": (("F1", "f1"), ("acc", "accuracy")),
    "qqp": (("F1", "f1"), ("acc", "accuracy")),
    "stsb": (("Pearson", "pearson"), ("Spearman", "spearman")),
    "mnli": (("m", "validation_matched_accuracy"), ("mm", "validation_mismatched_accuracy")),
}
METHOD_ORDER: tuple[str, ...] = ("teacher",) + tuple(m.method for m in METHODS)


def task_order_key(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def method_order_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def task_header(task: str) -> str:
    """Column header: task name and its official metric(s)."""
    metrics = TASK_METRICS.get(task, (("acc", "accuracy"),))
    return f"{TASK_LABELS.get(task, task)} ({'/'.join(m for m, _ in metrics)})"
