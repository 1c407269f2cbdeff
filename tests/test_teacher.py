"""Teacher fine-tuning on real RTE rows with the tiny random BERT, and the teacher cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kdray.teacher as teacher_mod
from kdray.config import DataConfig, RunConfig, TeacherConfig, TrainConfig
from kdray.models import load_teacher
from kdray.loop_data import bucketed_batches
from kdray.teacher import finetune_teacher, get_teacher, teacher_cache_dir


def _run(glue_dir: Path, **teacher: object) -> RunConfig:
    return RunConfig(
        task="rte",
        data=DataConfig(source="local", dir=str(glue_dir), max_train_samples=64, max_eval_samples=32),
        teacher=TeacherConfig(model="tiny-bert", epochs=2, batch_size=16, lr=1e-3, seed=7, **teacher),
        train=TrainConfig(max_seq_length=64, progress=False),
    )


def test_bucketed_batches_cover_every_row_once_with_little_padding() -> None:
    lengths = [(i * 37) % 100 + 1 for i in range(1000)]
    batches = bucketed_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 20  # random batches would span nearly the whole 1..100 range
    again = bucketed_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert again == batches


def test_cache_key_changes_with_what_changes_the_teacher(tmp_path: Path) -> None:
    run = _run(tmp_path)
    base = teacher_cache_dir("rte", run.teacher, run.data, 64, tmp_path)
    # the data folder is part of the key since issue 19.9 (a teacher of other rows is never reused; before,
    # this test asserted the opposite); the tokenization cache folder is not
    assert base == teacher_cache_dir("rte", run.teacher, run.data.model_copy(update={"cache_dir": "/x"}), 64, tmp_path)
    for other in (
        teacher_cache_dir("rte", run.teacher, run.data.model_copy(update={"dir": "/x"}), 64, tmp_path),
        teacher_cache_dir("mrpc", run.teacher, run.data, 64, tmp_path),
        teacher_cache_dir("rte", run.teacher.model_copy(update={"lr": 2e-3}), run.data, 64, tmp_path),
        teacher_cache_dir("rte", run.teacher.model_copy(update={"seed": 8}), run.data, 64, tmp_path),
        teacher_cache_dir("rte", run.teacher, run.data.model_copy(update={"max_train_samples": 65}), 64, tmp_path),
        teacher_cache_dir("rte", run.teacher, run.data, 128, tmp_path),
    ):
        assert other != base
    custom = teacher_cache_dir("rte", run.teacher.model_copy(update={"cache_dir": str(tmp_path / "t")}), run.data, 64, tmp_path)
    assert custom.parent == tmp_path / "t"


def test_finetune_then_cache_reuse(glue_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(glue_dir)
    first = get_teacher("rte", run, tmp_path)
    assert first.path.parent == tmp_path / "teachers"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json"):
        assert (first.path / name).is_file(), name
    info = json.loads((first.path / "metrics.json").read_text())
    assert set(info["metrics"]) == {"accuracy"} and 0.0 <= first.score <= 1.0
    assert info["score"] == first.score and info["hyperparameters"]["lr"] == 1e-3
    assert info["train_rows"] == 64 and info["dev_rows"] == {"validation": 32}
    assert info["seconds"] > 0

    # Training moved the weights away from the seeded initialisation.
    init = load_teacher("tiny-bert", teacher_mod.get_task("rte"))
    trained = load_file(str(first.path / "model.safetensors"))
    assert not torch.allclose(trained["bert.embeddings.word_embeddings.weight"],
                              init.bert.embeddings.word_embeddings.weight)

    # The saved teacher reloads and scores what metrics.json says.
    reloaded = get_teacher("rte", run.model_copy(update={"teacher": run.teacher.model_copy(
        update={"finetuned": {"rte": str(first.path)}})}), tmp_path)
    assert reloaded.score == pytest.approx(first.score) and reloaded.metrics == pytest.approx(first.metrics)

    # A second call reuses the folder and never trains.
    def _no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached teacher was fine-tuned again")

    monkeypatch.setattr(teacher_mod, "finetune_teacher", _no_training)
    again = get_teacher("rte", run, tmp_path)
    assert again.path == first.path and again.score == first.score and again.metrics == first.metrics


def test_finetune_is_seeded_and_replaces_only_teacher_folders(glue_dir: Path, tmp_path: Path) -> None:
    run = _run(glue_dir)
    a = finetune_teacher("rte", run.teacher, run.data, 64, tmp_path / "a", progress=False)
    first = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = finetune_teacher("rte", run.teacher, run.data, 64, tmp_path / "a", progress=False)  # replaces a
    second = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert a.metrics == b.metrics
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp or old folders left behind
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a kdray teacher folder"):
        finetune_teacher("rte", run.teacher, run.data, 64, tmp_path / "user", progress=False)
    assert (tmp_path / "user" / "notes.txt").read_text() == "keep me"


def test_cache_folder_names_stay_those_of_existing_caches(tmp_path: Path) -> None:
    """Users' teacher and teacher-output caches are found by these names: the hashes change only on purpose."""
    from kdray.teacher_outputs import cache_key

    teacher = TeacherConfig(model="tiny-bert", seed=7, lr=1e-3)
    name = teacher_cache_dir("rte", teacher, DataConfig(max_train_samples=64), 64, tmp_path).name
    # e662c72 gave rte-tiny-bert-f5258df7e998; issue 19.9 added the row-picking data settings to the key
    assert name == "rte-tiny-bert-78674b29c9d8"
    parts = {"teacher": {"path": "/t", "files": [("model.safetensors", 10, 20)]}, "task": "rte", "max_len": 64,
             "layers": [2, 4], "rows": 64, "data": None}
    assert cache_key(parts) == "65d31168d1ccb161"


def test_teacher_metrics_with_old_split_keys_read_back(tmp_path: Path) -> None:
    """Teachers fine-tuned before the one key convention wrote ``split/metric``; they read as ``split_metric``."""
    run = _run(tmp_path).model_copy(update={"task": "mnli"})
    folder = teacher_cache_dir("mnli", run.teacher, run.data, run.train.max_seq_length, tmp_path)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "metrics": {"validation_matched/accuracy": 0.8, "validation_mismatched/accuracy": 0.7}, "score": 0.75}))
    found = get_teacher("mnli", run, tmp_path)
    assert found.metrics == {"validation_matched_accuracy": 0.8, "validation_mismatched_accuracy": 0.7}
    assert found.score == 0.75 and found.path == folder


@pytest.mark.parametrize("change", [{"subsample_seed": 3}, {"subsample_seed": None}, {"holdout_fraction": 0.1},
                                    {"holdout_max": 50}, {"source": "local"}, {"dir": "/elsewhere/glue"},
                                    {"max_train_samples": 65}, {"max_eval_samples": 10}])
def test_every_row_picking_data_setting_gives_a_new_teacher(tmp_path: Path, change: dict) -> None:
    """A teacher fine-tuned on other rows is never reused (issue 19.9); the tokenization cache folder is not a key."""
    teacher = TeacherConfig(model="tiny-bert", seed=7)
    base = DataConfig(max_train_samples=64)
    name = teacher_cache_dir("rte", teacher, base, 64, tmp_path).name
    assert teacher_cache_dir("rte", teacher, base.model_copy(update=change), 64, tmp_path).name != name
    same = base.model_copy(update={"cache_dir": str(tmp_path / "tok")})
    assert teacher_cache_dir("rte", teacher, same, 64, tmp_path).name == name
