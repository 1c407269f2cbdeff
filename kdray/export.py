"""The distilled student as a deployable transformers folder: weights, tokenizer and a model card.

The loop saves each finished run's student with :func:`save_student` (``save_pretrained`` + tokenizer + README),
so ``AutoModelForSequenceClassification.from_pretrained(folder)`` loads it with no kdray code. A sweep keeps the
best student per task (:mod:`kdray.sweep.recorder`); :func:`export_best` copies it out (``kdray export``).
"""

from __future__ import annotations

import contextlib
import math
import shlex
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from kdray.io import atomic_folder
from kdray.records import RunResult

STUDENT_FOLDER = "student"  # under a run's output_dir
CARD = "README.md"
RUN_CONFIG = "run_config.yaml"


def save_student(student: Any, tokenizer: Any, folder: str | Path, record: RunResult, commands: list[str],
                 run_config: Any = None) -> Path:
    """Write ``student`` (a PreTrainedModel), ``tokenizer`` and a model card to ``folder`` atomically.

    An existing folder (a re-run of the same output_dir) is replaced. ``run_config`` (a RunConfig), when given,
    is saved as ``run_config.yaml`` so the card's ``kdray train`` command can be rerun from the folder alone.
    """
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)  # atomic_folder keeps an existing folder; a new run's student replaces the old one
    with atomic_folder(folder) as tmp, _no_progress_bar():
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if run_config is not None:
            import yaml

            (tmp / RUN_CONFIG).write_text(yaml.safe_dump(run_config.model_dump(mode="json"), sort_keys=False))
        (tmp / CARD).write_text(model_card(record, commands))
    return folder


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """transformers' "Writing model shards" bar, one per trial in a sweep's log, is off while a student is saved."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def train_commands(record: RunResult, has_config: bool = True) -> list[str]:
    """The command that reproduces a run from its student folder (its saved run_config.yaml and teacher)."""
    if not has_config:
        return []
    return [f"kdray train {RUN_CONFIG} --teacher {shlex.quote(record.teacher)}"]


def selection_summary(traces: list[dict[str, Any]]) -> list[str]:
    """Per knowledge kind: its mean weight over the final run's phases and in how many phases it was used."""
    final = [t for t in traces if (t.get("episode", -1) if t.get("episode") is not None else -1) < 0]
    weights: dict[str, list[float]] = defaultdict(list)
    for t in final:
        w = t.get("weight")
        if w is not None and math.isfinite(float(w)):
            weights[str(t["knowledge"])].append(float(w))
    lines = []
    for kind, ws in weights.items():
        used = sum(1 for w in ws if w > 0)
        lines.append(f"| {kind} | {sum(ws) / len(ws):.3f} | {used}/{len(ws)} |")
    return lines


def model_card(record: RunResult, commands: list[str]) -> str:
    """A short README.md: what the student is, how it was distilled and selected, how well it scores."""
    dev = ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.dev_metrics.items())) or "-"
    lines = [
        f"# kdray student: {record.task} ({record.method})",
        "",
        "A student distilled with kdray (knowledge distillation with learned knowledge selection). Load it with",
        "`transformers.AutoModelForSequenceClassification.from_pretrained(<this folder>)`.",
        "",
        f"- task: {record.task} (GLUE); metric: {record.metric_name}",
        f"- dev score: {record.dev_score:.4f} ({dev})",
        f"- teacher: {record.teacher} (dev score {record.teacher_score:.4f})",
        f"- student: {record.student} ({record.student_params:,} parameters)",
        f"- method: {record.method}, action {record.action}, knowledge pool {', '.join(record.knowledge_pool)}, "
        f"phase {record.phase_steps} steps",
        f"- training: {record.train_steps} steps ({record.final_steps} in the final run), seed {record.seed}, "
        f"{record.train_seconds:.1f} s",
    ]
    summary = selection_summary(record.traces)
    if summary:
        lines += ["", "## Knowledge selection (final run)", "",
                  "| knowledge | mean weight | phases used |", "|---|---|---|", *summary]
    if commands:
        lines += ["", "## Commands", "", "```bash", *commands, "```"]
    return "\n".join(lines) + "\n"


def best_student_row(results_dir: str | Path, task: str) -> dict[str, Any]:
    """The finished trial of ``task`` with the best dev_score whose student folder still exists."""
    from kdray.results import load

    trials, _ = load(results_dir)
    if "student_path" not in trials:
        raise ValueError(f"{results_dir}: trials.parquet records no student_path (a sweep of an older kdray)")
    rows = trials[(trials["task"] == task) & (trials["status"] == "TERMINATED") & trials["student_path"].notna()]
    rows = rows[[Path(p).is_dir() for p in rows["student_path"]]]
    if rows.empty:
        tasks = sorted(trials.loc[trials["student_path"].notna(), "task"].unique())
        raise ValueError(f"{results_dir}: no saved student for task {task!r} (students saved for: "
                         f"{', '.join(tasks) or 'none'})")
    return rows.sort_values("dev_score", ascending=False).iloc[0].to_dict()


def export_best(results_dir: str | Path, task: str, out: str | Path) -> dict[str, Any]:
    """Copy the best student of ``task`` to ``out`` (refused when ``out`` holds anything); returns its row."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; pass a new --out")
    row = best_student_row(results_dir, task)
    if out.exists():
        out.rmdir()
    with atomic_folder(out) as tmp:
        shutil.copytree(row["student_path"], tmp, dirs_exist_ok=True)
    return row


def keep_best_student(folder: str | Path, dev_score: float, best: dict[str, Any] | None, keep_dir: str | Path,
                      higher_is_better: bool = True) -> str | None:
    """Move a finished trial's student into ``keep_dir`` when it beats ``best`` (that task's kept student, a
    ``{"student_path", "dev_score"}`` row or None), deleting the loser's folder; returns the kept path or None.

    Disk stays bounded by one student per task, whatever the number of trials.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    old_path = None if best is None else best.get("student_path")
    old_score = None if best is None else best.get("dev_score")
    beats = (old_path is None or not Path(old_path).is_dir() or old_score is None or not math.isfinite(old_score)
             or (math.isfinite(dev_score) and (dev_score > old_score if higher_is_better else dev_score < old_score)))
    if not beats:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    target = Path(keep_dir) / folder.parent.name
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(target))
    if old_path and Path(old_path).is_dir() and Path(old_path).resolve() != target.resolve():
        shutil.rmtree(old_path, ignore_errors=True)
    return str(target)

