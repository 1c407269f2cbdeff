"""TensorBoard event files of one run read back, and the sweep's ``logging:`` section refused when its package
is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from kdray.config import ConfigError, load_sweep_config
from kdray.tblog import PhaseLog, tensorboard_command, trial_logdir

REPO = Path(__file__).resolve().parents[1]


def test_phase_log_writes_what_tensorboard_reads_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = trial_logdir(tmp_path / "smoke", "smoke-rte-s1-c987b5b530")
    log = PhaseLog(logdir)
    log.log_phase(2, {"finetune": 0.25, "response": 0.75}, 0.1, 0.05, 0.69, {"finetune": 0.7, "response": 1.2}, 3.5)
    log.log_phase(4, {"finetune": 1.0, "response": 0.0}, None, float("nan"), 0.68, {"finetune": 0.6}, 4.0)
    log.log_eval(4, {"step": 4, "epoch": 0.5, "dev_score": 0.55, "accuracy": 0.55, "train_loss": 0.66})
    log.close()

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"weight/finetune", "weight/response", "loss/finetune", "loss/response", "phase/reward",
            "phase/q_value", "phase/reward_set_loss", "phase/steps_per_second", "dev/dev_score", "dev/accuracy",
            "dev/train_loss"} <= tags
    assert "dev/step" not in tags and "dev/epoch" not in tags
    assert [(e.step, e.value) for e in acc.Scalars("weight/finetune")] == [(2, 0.25), (4, 1.0)]
    # a phase without a reward or a finite prediction writes nothing for it, not a made-up 0
    assert [e.step for e in acc.Scalars("phase/reward")] == [2] and [e.step for e in acc.Scalars("phase/q_value")] == [2]
    assert acc.Scalars("dev/dev_score")[0].value == pytest.approx(0.55)
    assert tensorboard_command(tmp_path / "smoke") == f"tensorboard --logdir {tmp_path / 'smoke' / 'tensorboard'}"


@pytest.mark.parametrize("key", ["wandb", "mlflow"])
def test_logging_section_names_a_missing_package(tmp_path: Path, key: str) -> None:
    from kdray.sweep.loggers import check_logging

    if importlib.util.find_spec(key) is not None:
        pytest.skip(f"{key} is installed here: the missing-package path cannot be reached")
    space = (REPO / "search_spaces" / "smoke.yaml").read_text() + f"logging: {{{key}: {{project: kd}}}}\n"
    (tmp_path / "s.yaml").write_text(space)
    sweep = load_sweep_config(tmp_path / "s.yaml")
    assert getattr(sweep.logging, key) == {"project": "kd"}
    with pytest.raises(ConfigError, match=f"logging.{key}: the '{key}' package is not installed; `pip install {key}`"):
        check_logging(sweep)


def test_logging_section_rejects_unknown_keys(tmp_path: Path) -> None:
    space = (REPO / "search_spaces" / "smoke.yaml").read_text() + "logging: {tensorbord: {}}\n"
    (tmp_path / "s.yaml").write_text(space)
    with pytest.raises(ConfigError, match="tensorbord"):
        load_sweep_config(tmp_path / "s.yaml")


def test_a_run_logs_every_phase_and_saves_its_student(rte_config, tiny_teacher: str, tmp_path: Path) -> None:
    """The loop writes TensorBoard scalars at each phase end and evaluation, and leaves a loadable student."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForSequenceClassification

    from kdray.distill import train

    logdir = tmp_path / "tb"
    cfg = rte_config(tmp_path / "run", **{"train.max_steps": 6, "train.eval_every": 3}).model_copy(
        update={"tensorboard_dir": str(logdir)})
    result = train(cfg, teacher_path=tiny_teacher)
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    weight_tags = [t for t in tags if "weight" in t]
    assert weight_tags and len(acc.Scalars(weight_tags[0])) == 2  # two phases of 3 steps
    assert any(t.startswith("dev/") for t in tags)
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student")
    assert student.config.num_hidden_layers == 2 and result.dev_score == result.dev_score
