"""The nine GLUE tasks: fields, labels (the hub's ids), official metrics and local file layout."""

from __future__ import annotations

from dataclasses import dataclass


class GlueDataError(ValueError):
    """Bad or missing GLUE data; the message names the file (or task) and what is wrong."""


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task as kdray uses it.

    ``label_names`` follow ``nyu-mll/glue`` on the hub, so local TSVs and the hub give the same ids.
    ``dev_files`` maps each dev split name to its file in the official layout.
    """

    name: str
    glue_dir: str
    text_keys: tuple[str, ...]
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    dev_files: tuple[tuple[str, str], ...] = (("validation", "dev.tsv"),)
    max_seq_length_hint: int = 128

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def dev_splits(self) -> tuple[str, ...]:
        return tuple(split for split, _ in self.dev_files)


_NLI = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
                 max_seq_length_hint=64),
        TaskSpec("sst2", "SST-2", ("sentence",), ("negative", "positive"), ("accuracy",), max_seq_length_hint=64),
        TaskSpec("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy")),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), (), ("pearson", "spearman")),
        TaskSpec("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy")),
        TaskSpec("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
                 dev_files=(("validation_matched", "dev_matched.tsv"), ("validation_mismatched", "dev_mismatched.tsv"))),
        TaskSpec("qnli", "QNLI", ("question", "sentence"), _NLI, ("accuracy",)),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), _NLI, ("accuracy",)),
        TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",)),
    )
}


def get_task(name: str) -> TaskSpec:
    """The spec of ``name`` (case-insensitive; ``sst-2``/``sts-b`` accepted)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise GlueDataError(f"unknown GLUE task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]
