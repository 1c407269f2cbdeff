"""Every name a user writes or reads: GLUE tasks, knowledge kinds, selectors and the methods they report as.

Why a leaf module of names, apart from the implementations: ``kdray.config`` sits at the left of the data
flow and must reject an unknown task, kind or selector before anything heavy (torch, datasets) is
imported, and ``kdray.report`` must label methods without importing torch either. So the names, labels
and table order are declared here, in a module that imports nothing of kdray, and the implementation
registries bind to them: ``register_knowledge`` (``kdray.knowledge.KNOWLEDGE``) and ``register_selector``
(``kdray.selection.SELECTORS``) refuse a name this module does not declare, so an implementation without
a label fails at import, and ``tests/test_registry.py`` fails when a declared name has no implementation.
Config validation, the CLI's choices, the loop's ``method`` column, the report's rows and the plots'
legends all read this module; adding a selector is one :class:`MethodSpec` line here plus its class.

The GLUE task table lives here (re-exported by ``kdray.glue.tasks``) for the same reason: it is pure data,
and importing it through ``kdray.glue`` would pull in the tokenizing code, which itself reads the config.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def label(self) -> str:
        """GLUE's own spelling of the task (``SST-2``), which is also its folder in the official layout."""
        return self.glue_dir


_NLI = ("entailment", "not_entailment")
#: the nine GLUE tasks, in the benchmark's column order (the report's task order)
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
TASK_NAMES: tuple[str, ...] = tuple(TASKS)

#: the knowledge pool's kinds (``knowledge.pool`` names), each implemented by one ``kdray.knowledge`` module
KNOWLEDGE_KINDS: tuple[str, ...] = ("finetune", "response", "feature", "relation", "attention", "embedding")


@dataclass(frozen=True)
class MethodSpec:
    """One row of the paper-style table: what a selector reports as.

    Attributes:
        method: the ``method`` value in ``trials.parquet`` (committed results depend on it: never rename).
        label: the report's row label.
        selector: the ``selector.name`` that produces it.
        action: the ``selector.action`` it stands for; None when the method is the same for both.
        varying: its weights change during training (the report's selection table and weight plots).
    """

    method: str
    label: str
    selector: str
    action: str | None = None
    varying: bool = False


#: every method, in the report's row order (the teacher row, which no selector produces, comes first there)
METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("finetune", "Finetune", "finetune"),
    MethodSpec("vanilla_kd", "Vanilla KD", "vanilla_kd"),
    MethodSpec("pkd", "PKD", "pkd"),
    MethodSpec("all", "All", "all"),
    MethodSpec("fixed", "Fixed", "fixed"),
    MethodSpec("schedule", "Schedule", "schedule", varying=True),
    MethodSpec("dynamic_kd", "Dynamic-KD", "dynamic_kd", varying=True),
    MethodSpec("random_hard", "Random-Hard", "random_hard", varying=True),
    MethodSpec("random_soft", "Random-Soft", "random_soft", varying=True),
    MethodSpec("actor_critic_hard", "AC-Hard", "actor_critic", action="hard", varying=True),
    MethodSpec("actor_critic_soft", "AC-Soft", "actor_critic", action="soft", varying=True),
    MethodSpec("bandit_hard", "KS-Bandit-Hard", "bandit", action="hard", varying=True),
    MethodSpec("bandit_soft", "KS-Bandit-Soft", "bandit", action="soft", varying=True),
)
#: ``selector.name`` values, in table order
SELECTOR_NAMES: tuple[str, ...] = tuple(dict.fromkeys(m.selector for m in METHODS))
METHOD_LABELS: dict[str, str] = {m.method: m.label for m in METHODS}
VARYING_METHODS: tuple[str, ...] = tuple(m.method for m in METHODS if m.varying)


def method_name(selector: str, action: str) -> str:
    """The ``method`` a run of ``selector`` with ``action`` records (``actor_critic`` + ``hard`` -> ``actor_critic_hard``)."""
    for spec in METHODS:
        if spec.selector == selector and spec.action in (None, action):
            return spec.method
    raise ValueError(f"no method declared for selector {selector!r} with action {action!r} in kdray.registry.METHODS")


def method_label(method: object) -> str:
    """Display name of a method (unknown ones are shown as they are)."""
    return METHOD_LABELS.get(str(method), str(method))


def require_declared(name: str, declared: tuple[str, ...], family: str) -> None:
    """Raise when an implementation registers a name this module does not declare (so it would have no label)."""
    if name not in declared:
        raise ValueError(
            f"{family} {name!r} is not declared in kdray.registry (declared: {', '.join(declared)}); "
            "add it there, with its report label for a selector, before registering an implementation"
        )
