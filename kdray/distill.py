"""The one distillation loop: ``train(config)`` runs the same in ``kdray train`` and in a Ray Train worker.

``train`` reads as the story of a run: set up what stays fixed (data, teacher, models, knowledge pool,
teacher-output cache, reward set, precision: :mod:`kdray.run_setup`), run the stage-1 episodes that train a
learning selector, run the final distillation (:mod:`kdray.loop`, over the typed
:class:`~kdray.state.TrainingState`), and record the result (``run_record.json``, ``traces.parquet``,
``selector.pt``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from kdray.config import RunConfig
from kdray.export import STUDENT_FOLDER, save_student, train_commands
from kdray.io import atomic_torch_save, atomic_write, atomic_write_text
from kdray.loop import Loop, Report
from kdray.models import count_parameters, load_tokenizer
from kdray.records import RunResult
from kdray.registry import method_name
from kdray.run_setup import RunSetup, set_up
from kdray.selection.base import Selector
from kdray.state import TrainingState

TRACE_COLUMNS = ["step", "phase", "episode", "knowledge", "weight", "reward", "q_value", "reward_set_loss"]


def train(
    config: RunConfig,
    *,
    teacher_path: str | None = None,
    report: Report | None = None,
    resume_from: str | None = None,
) -> RunResult:
    """Distil one student as ``config`` says; return (and write to ``output_dir``) its run record.

    Args:
        config: the validated run.
        teacher_path: a fine-tuned teacher folder; None = find or fine-tune it (:func:`kdray.teacher.get_teacher`).
        report: called with the metrics of every dev evaluation (after the checkpoint of that step is written).
        resume_from: a checkpoint (file or folder) of this run to continue bit-for-bit.
    """
    setup = set_up(config, teacher_path)
    loop = Loop(setup, report)
    if resume_from:
        loop.resume(resume_from)
    else:
        loop.start_segment(0)
        loop.measure_kind_costs()
    while not loop.final:  # stage 1: episodes that train a learning selector
        loop.run_segment()
    loop.run_segment()  # the final run
    loop.close()
    result = run_record(setup, loop.state)
    if setup.rank == 0:
        out = Path(config.output_dir)
        write_record(result, loop.state.selector, out)
        # the deployable student: a transformers folder with its tokenizer and a model card
        save_student(loop.state.student, load_tokenizer(str(setup.teacher_path)), out / STUDENT_FOLDER, result,
                     train_commands(result), config)
    return result


def run_record(setup: RunSetup, state: TrainingState) -> RunResult:
    """The run's typed record from its fixed setup and its final training state."""
    config, c = setup.config, state.counters
    sc = config.selector
    return RunResult(
        task=config.task, metric_name="/".join(setup.spec.metrics), dev_score=float(state.last_eval.dev_score),
        dev_metrics=dict(state.last_eval.metrics),
        holdout_score=math.nan if state.last_eval.holdout_score is None else float(state.last_eval.holdout_score),
        teacher_score=float(setup.teacher_score),
        method=method_name(sc.name, sc.action),
        action=sc.action, knowledge_pool=list(state.selector.pool), phase_steps=sc.phase_steps,
        reward_shaping=sc.reward.model_dump(), seed=config.train.seed, teacher=str(setup.teacher_path),
        student=_student_name(config), student_params=count_parameters(state.student), train_steps=c.steps,
        train_seconds=c.train_seconds, samples_per_second=c.samples / max(c.train_seconds, 1e-9),
        selector_seconds=c.selector_seconds, final_steps=setup.total_steps,
        mean_step_seconds=c.step_seconds / max(1, c.steps), teacher_cache=setup.cache is not None,
        branch_steps=c.branch_steps,
        traces=list(state.traces),
    )


def write_record(result: RunResult, selector: Selector, out_dir: Path) -> None:
    """run_record.json, traces.parquet and selector.pt, each written atomically."""
    atomic_write_text(out_dir / "run_record.json", json.dumps(result.record(), indent=2, default=float))
    frame = pd.DataFrame(result.traces, columns=TRACE_COLUMNS)
    atomic_write(out_dir / "traces.parquet", lambda fh: frame.to_parquet(fh, index=False))
    atomic_torch_save(selector.state_dict(), out_dir / "selector.pt")


def _student_name(config: RunConfig) -> str:
    s = config.student
    return s.model or "" if s.init == "pretrained" else f"{config.teacher.model}:layers={s.layers}"

