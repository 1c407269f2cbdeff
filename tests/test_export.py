"""The student as a transformers folder: it loads without kdray and scores what the run scored; a sweep keeps one
student per task (the best) and ``kdray export`` copies it out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kdray.config import DataConfig, StudentConfig
from kdray.export import export_best, keep_best_student, model_card, save_student
from kdray.records import RunResult

TRACES = [{"step": 2, "phase": 0, "episode": 0, "knowledge": "response", "weight": 1.0},  # stage 1: not summarised
          {"step": 2, "phase": 0, "episode": -1, "knowledge": "finetune", "weight": 0.25},
          {"step": 2, "phase": 0, "episode": -1, "knowledge": "response", "weight": 0.0},
          {"step": 4, "phase": 1, "episode": -1, "knowledge": "finetune", "weight": 0.75},
          {"step": 4, "phase": 1, "episode": -1, "knowledge": "response", "weight": 1.0}]


def _record(dev_score: float = 0.5, task: str = "rte") -> RunResult:
    return RunResult(task=task, metric_name="accuracy", dev_score=dev_score, dev_metrics={"accuracy": dev_score},
                     teacher_score=0.6, method="actor_critic_soft", action="soft",
                     knowledge_pool=["finetune", "response"], phase_steps=2, reward_shaping={}, seed=1,
                     teacher="/teachers/rte", student="tiny-bert:layers=2", student_params=1000, train_steps=8,
                     train_seconds=1.5, samples_per_second=40.0, selector_seconds=0.1, final_steps=4,
                     traces=TRACES)


def _dev_score(model: torch.nn.Module, tokenizer, glue_dir: Path) -> float:
    from kdray.glue import compute_metrics, get_task, make_collator, prepare_data, primary_score
    from kdray.loop_data import predict

    data = prepare_data("rte", tokenizer, DataConfig(source="local", dir=str(glue_dir), max_eval_samples=48), 64, 1)
    preds, labels, _ = predict(model, data.dev["validation"], make_collator(tokenizer), 16, torch.device("cpu"),
                               get_task("rte").is_regression)
    return primary_score("rte", compute_metrics("rte", preds, labels))


def test_saved_student_loads_with_transformers_and_scores_the_same(glue_dir: Path, tiny_teacher: str,
                                                                   tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdray.glue import get_task
    from kdray.models import build_student, load_teacher, load_tokenizer

    torch.manual_seed(0)
    teacher = load_teacher(tiny_teacher, get_task("rte"))
    student = build_student(teacher, StudentConfig(layers=2), get_task("rte"))
    with torch.no_grad():  # a student that is not its teacher's copy: its own weights must survive the round trip
        for p in student.classifier.parameters():
            p.add_(torch.randn_like(p))
    tokenizer = load_tokenizer(tiny_teacher)
    score = _dev_score(student, tokenizer, glue_dir)
    folder = save_student(student, tokenizer, tmp_path / "run" / "student", _record(score), ["kdray train x.yaml"])

    loaded = AutoModelForSequenceClassification.from_pretrained(folder)
    again = _dev_score(loaded, AutoTokenizer.from_pretrained(folder), glue_dir)
    assert again == pytest.approx(score, abs=1e-6)
    state, loaded_state = student.state_dict(), loaded.state_dict()
    assert all(torch.allclose(state[k], loaded_state[k]) for k in state)
    card = (folder / "README.md").read_text()
    assert f"{score:.4f}" in card and "kdray train x.yaml" in card and "/teachers/rte" in card
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temp folder left behind


def test_model_card_summarises_the_final_runs_selection() -> None:
    card = model_card(_record(0.61), [])
    assert "| finetune | 0.500 | 2/2 |" in card and "| response | 0.500 | 1/2 |" in card  # stage 1 left out
    assert "dev score: 0.6100" in card and "actor_critic_soft" in card and "## Commands" not in card


def _fake_student(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(tag)
    return folder


def test_keep_best_student_keeps_one_per_task_and_export_copies_it(tmp_path: Path) -> None:
    from kdray import results

    keep, sweep = tmp_path / "sweep" / "students", tmp_path / "sweep"
    rows = []
    for key, score in [("t1", 0.5), ("t2", 0.7), ("t3", 0.6)]:
        src = _fake_student(tmp_path / "trials" / key / "student", key)
        kept = keep_best_student(src, score, results.kept_student(sweep, "rte"), keep)
        rows.append(results.trial_row("s", key, dataclasses.replace(_record(score), traces=[]), student_path=kept))
        results.append_trials(sweep, rows[-1:])
        assert not src.exists()  # moved into students/ or deleted: never left in the trial folder
    assert [r["student_path"] for r in rows] == [str(keep / "t1"), str(keep / "t2"), None]
    assert sorted(p.name for p in keep.iterdir()) == ["t2"]  # t1 was replaced by the better t2
    assert results.kept_student(sweep, "rte")["dev_score"] == 0.7

    out = export_best(sweep, "rte", tmp_path / "out")
    assert out["trial_id"] == "t2" and (tmp_path / "out" / "config.json").read_text() == "t2"
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_best(sweep, "rte", tmp_path / "out")
    with pytest.raises(ValueError, match="no saved student for task 'sst2'"):
        export_best(sweep, "sst2", tmp_path / "other")


def test_export_cli_refuses_a_non_empty_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from kdray import results
    from kdray.cli import main

    sweep = tmp_path / "sweep"
    kept = keep_best_student(_fake_student(tmp_path / "trials" / "k" / "student", "k"), 0.5, None,
                             sweep / "students")
    results.append_trials(sweep, [results.trial_row("s", "k", dataclasses.replace(_record(), traces=[]),
                                                    student_path=kept)])
    assert main(["export", str(sweep), "--task", "rte", "--out", str(tmp_path / "out")]) == 0
    assert "k" in capsys.readouterr().out and (tmp_path / "out" / "config.json").is_file()
    assert main(["export", str(sweep), "--task", "rte", "--out", str(tmp_path / "out")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
