"""TensorBoard event files of one run read back, and the sweep's ``logging:`` section refused when its package
is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from kdray.config import ConfigError, SweepConfig, load_sweep_config
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


def _sweep_with_logging(tmp_path: Path, logging: str) -> SweepConfig:
    space = (REPO / "search_spaces" / "smoke.yaml").read_text() + f"logging: {logging}\n"
    (tmp_path / "s.yaml").write_text(space)
    return load_sweep_config(tmp_path / "s.yaml")


@pytest.mark.parametrize("key", ["wandb", "mlflow"])
def test_logging_section_names_a_missing_package(tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdray.sweep import loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name, *a: None if name == key else real(name, *a))
    sweep = _sweep_with_logging(tmp_path, f"{{{key}: {{project: kd}}}}")
    assert getattr(sweep.logging, key) == {"project": "kd"}
    with pytest.raises(ConfigError, match=f"logging.{key}: the '{key}' package is not installed; `pip install {key}`"):
        loggers.check_logging(sweep)


def test_logging_refuses_what_rays_callbacks_would_fail_on_late(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B without any key (offline too) and MLflow's refused file store are named before Ray starts; a key in
    the environment or the space passes."""
    from kdray.sweep import loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name, *a: real("json") if name in ("wandb", "mlflow")
                        else real(name, *a))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    with pytest.raises(ConfigError, match="logging.wandb: no W&B API key.*WANDB_MODE=offline"):
        loggers.check_logging(_sweep_with_logging(tmp_path, "{wandb: {project: kd}}"))
    loggers.check_logging(_sweep_with_logging(tmp_path, "{wandb: {project: kd, api_key_file: /k}}"))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    loggers.check_logging(_sweep_with_logging(tmp_path, "{wandb: {project: kd}}"))
    with pytest.raises(ConfigError, match="logging.mlflow.tracking_uri 'file:./mlruns'.*sqlite:///"):
        loggers.check_logging(_sweep_with_logging(tmp_path, "{mlflow: {tracking_uri: 'file:./mlruns'}}"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    loggers.check_logging(_sweep_with_logging(tmp_path, "{mlflow: {tracking_uri: 'file:./mlruns'}}"))


def test_logging_files_default_to_the_sweep_folder(tmp_path: Path) -> None:
    from kdray.sweep.loggers import with_default_places

    sweep_dir = tmp_path / "runs" / "s"
    assert with_default_places("mlflow", {"experiment_name": "kd"}, str(sweep_dir)) == {
        "experiment_name": "kd", "tracking_uri": f"sqlite:///{sweep_dir.resolve() / 'mlflow.db'}"}
    assert with_default_places("wandb", {"project": "kd"}, str(sweep_dir)) == {
        "project": "kd", "dir": str((sweep_dir / "wandb").resolve())}
    assert (sweep_dir / "wandb").is_dir()
    kept = {"tracking_uri": "http://mlflow:5000"}
    assert with_default_places("mlflow", kept, str(sweep_dir)) == kept
    assert with_default_places("wandb", {"project": "kd"}, "s3://b/s") == {"project": "kd"}


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
