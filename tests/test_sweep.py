"""Sweeps on a real local Ray: grid and Optuna end to end, a NaN trial recorded as ERROR, kill + resume. Trials run
the real kdray.distill.train on tiny-bert and 32 RTE rows. (`ray job submit` to a 127.0.0.1 head, as the cluster
README writes it: tests/test_clusters.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdray.results import TRACE_COLUMNS, TRIAL_COLUMNS, load
from kdray.sweep import run_sweep

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def space(tmp: Path, glue_dir: Path, name: str, search: dict, seeds=(1,), selector="vanilla_kd",
          trainer: str = "auto") -> Path:
    doc = {
        "name": name,
        "tasks": ["rte"],
        "data": {"source": "local", "dir": str(glue_dir), "max_train_samples": 32, "max_eval_samples": 16,
                 "holdout_fraction": 0.1, "holdout_max": 8},
        "teacher": {"model": "tiny-bert", "epochs": 1, "batch_size": 16},
        "student": {"layers": 2},
        "train": {"max_steps": 4, "batch_size": 8, "eval_batch_size": 16, "max_seq_length": 32, "lr": 1.0e-4,
                  "seeds": list(seeds)},
        "selector": {"name": selector, "phase_steps": 2, "episodes": 1, "episode_steps": 2},
        "knowledge": {"pool": ["finetune", "response"]},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "trainer": trainer},
        "search": search,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("trainer", ["auto", "ray_train"])
def test_grid_sweep_with_a_nan_trial(tmp_path: Path, glue_dir: Path, trainer: str,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    """Both ways a one-worker trial runs: in the Tune trial itself (auto) and as a Ray Train TorchTrainer."""
    # ray_train: one seed (a TorchTrainer costs ~25 s a trial on 2 cores); auto: two
    seeds = (1, 2) if trainer == "auto" else (1,)
    path = space(tmp_path, glue_dir, "grid", {"mode": "grid", "space": {"train.lr": {"grid": [1.0e-4, 1.0e+30]}}},
                 seeds=seeds, trainer=trainer)
    code = run_sweep(str(path), storage=str(tmp_path / "runs"))
    assert code == 1  # some trial failed, the sweep still finished
    shown = capfd.readouterr().out
    assert "grid-rte-s1-" in shown and "max_grad_norm" not in shown  # Tune shows trial keys, not whole runs
    trials, traces = load(tmp_path / "runs" / "grid")
    assert set(TRIAL_COLUMNS) <= set(trials.columns) and "train.lr" in trials.columns
    assert set(TRACE_COLUMNS) <= set(traces.columns)
    assert len(trials) == 2 * len(seeds) and trials["trial_id"].is_unique
    ok, bad = trials[trials["train.lr"] < 1], trials[trials["train.lr"] > 1]
    assert (ok["status"] == "TERMINATED").all() and ok["dev_score"].between(0, 1).all()
    assert sorted(ok["seed"]) == list(seeds) and (ok["method"] == "vanilla_kd").all() and (ok["train_steps"] == 4).all()
    assert (bad["status"] == "ERROR").all() and bad["error"].str.contains("non-finite").all()
    assert set(traces["trial_id"]) <= set(ok["trial_id"]) and len(traces) > 0
    if trainer == "auto":  # what a user watches and keeps: TensorBoard events per trial, the best student
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for trial_id in ok["trial_id"]:
            acc = EventAccumulator(str(tmp_path / "runs" / "grid" / "tensorboard" / trial_id))
            acc.Reload()
            assert any("weight" in tag for tag in acc.Tags()["scalars"])
        kept = trials["student_path"].dropna()
        assert len(kept) == 1 and (Path(kept.iloc[0]) / "config.json").is_file()  # one task: one best student


def test_optuna_sweep(tmp_path: Path, glue_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Two-objective Optuna (dev_score up, train_seconds down) with a mid-run evaluation: every report carries
    both metrics (Tune refused the mid-run one before train_seconds was in it). The one-objective path runs in
    tests/test_schedule_search.py."""
    path = space(tmp_path, glue_dir, "opt", {"mode": "optuna", "num_samples": 2, "seed": 3, "multi_objective": True,
                                             "space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]},
                                                       "knowledge.pool": {"choice": [["finetune"], ["finetune", "response"]]}}})
    doc = yaml.safe_load(path.read_text())
    doc["train"]["progress"] = False  # trial bars off, as in the committed space files
    doc["train"]["eval_every"] = 2  # a mid-run report before the last one
    path.write_text(yaml.safe_dump(doc))
    assert run_sweep(str(path), storage=str(tmp_path / "runs")) == 0
    assert "teacher rte:" in capfd.readouterr().err  # the driver's teacher fine-tuning still shows its bar
    trials, _ = load(tmp_path / "runs" / "opt")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all() and trials["trial_id"].is_unique
    assert trials["train.lr"].between(1e-5, 1e-3).all()
    assert all(list(p) in (["finetune"], ["finetune", "response"]) for p in trials["knowledge_pool"])


@pytest.mark.slow
def test_wandb_and_mlflow_callbacks_log_real_runs(tmp_path: Path, glue_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`logging:` with both packages installed (`pip install -e .[logging]`): W&B offline and MLflow write the
    trial's run inside the sweep folder (their default places). Skipped where the packages are not installed."""
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # offline runs still need a key for Ray's callback
    path = space(tmp_path, glue_dir, "logs", {"mode": "grid"})
    doc = yaml.safe_load(path.read_text())
    doc["logging"] = {"wandb": {"project": "kdray-test"}, "mlflow": {"experiment_name": "kdray-test"}}
    path.write_text(yaml.safe_dump(doc))
    assert run_sweep(str(path), storage=str(tmp_path / "runs")) == 0
    sweep_dir = tmp_path / "runs" / "logs"
    trials, _ = load(sweep_dir)
    assert list(trials["status"]) == ["TERMINATED"]
    assert list((sweep_dir / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{sweep_dir.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kdray-test").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["dev_score"] == pytest.approx(trials["dev_score"].iloc[0])


def test_committed_parquet_restored_into_fresh_storage_resumes(tmp_path: Path, glue_dir: Path) -> None:
    """The study procedure across sittings (results/glue_study/README.md): a sweep's trials.parquet and
    traces.parquet are committed, a fresh machine copies them into a new storage folder and runs the grown space
    with --resume; the recorded trial is not run again (same key, row untouched), the new one runs, traces are
    not duplicated. (A killed driver's resume: tests/test_sweep_faults.py.)"""
    first = space(tmp_path, glue_dir, "study", {"mode": "grid", "space": {"selector.name": {"grid": ["finetune"]}}})
    assert run_sweep(str(first), storage=str(tmp_path / "old")) == 0
    committed = tmp_path / "results" / "study"
    committed.mkdir(parents=True)
    for name in ("trials.parquet", "traces.parquet"):
        shutil.copy2(tmp_path / "old" / "study" / name, committed / name)
    before, before_traces = load(committed)
    # next sitting: a fresh storage folder, the committed files restored, the whole grid resumed
    fresh = tmp_path / "fresh" / "study"
    fresh.mkdir(parents=True)
    for name in ("trials.parquet", "traces.parquet"):
        shutil.copy2(committed / name, fresh / name)
    grown = space(tmp_path, glue_dir, "study", {"mode": "grid", "space": {"selector.name": {"grid": ["finetune", "vanilla_kd"]}}})
    done = subprocess.run([PY, "-m", "kdray", "sweep", str(grown), "--storage", str(tmp_path / "fresh"), "--resume"],
                          env=env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials, traces = load(fresh)
    assert len(trials) == 2 and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all()
    assert set(trials["method"]) == {"finetune", "vanilla_kd"}
    old_id = before["trial_id"].iloc[0]
    assert trials.set_index("trial_id").loc[old_id, "finished_at"] == before["finished_at"].iloc[0]
    assert (traces["trial_id"] == old_id).sum() == len(before_traces)
    assert not traces.duplicated(["trial_id", "episode", "step", "knowledge"]).any()
    # every row keeps what it ran with; an edited fixed setting is refused before Ray starts (tests/test_sweep_settings.py)
    assert trials["run_settings"].map(lambda s: '"train.lr": 0.0001' in s).all()
    edited = grown.read_text().replace("lr: 0.0001", "lr: 0.0002")
    assert edited != grown.read_text()
    grown.write_text(edited)
    refused = subprocess.run([PY, "-m", "kdray", "sweep", str(grown), "--storage", str(tmp_path / "fresh"), "--resume"],
                             env=env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "train.lr: 0.0001 -> 0.0002" in refused.stderr, refused.stderr[-2000:]
    rerun = subprocess.run([PY, "-m", "kdray", "sweep", str(grown), "--storage", str(tmp_path / "fresh"),
                            "--rerun-changed"], env=env(), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "2 recorded trial(s) ran with other settings and run again" in rerun.stdout
    again, _ = load(fresh)
    assert sorted(again["trial_id"]) == sorted(trials["trial_id"]) and (again["status"] == "TERMINATED").all()
    assert again["run_settings"].map(lambda s: '"train.lr": 0.0002' in s).all()
    finished = again.set_index("trial_id")["finished_at"].sort_index()
    assert (finished > trials.set_index("trial_id")["finished_at"].sort_index()).all()


def test_teachers_only_prepares_every_teacher_without_ray(tmp_path: Path, glue_dir: Path) -> None:
    """`--teachers-only` fine-tunes each distinct teacher (two tasks, in parallel processes as on a GPU box) and
    stops without starting Ray; a second call finds them instead of training again."""
    path = space(tmp_path, glue_dir, "prep", {"mode": "grid"})
    doc = yaml.safe_load(path.read_text())
    doc["tasks"] = ["rte", "mrpc"]
    path.write_text(yaml.safe_dump(doc))
    storage = tmp_path / "runs"
    probe = ("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] == 'ray':\n"
             "            raise ImportError('ray must not be imported')\n"
             "sys.meta_path.insert(0, Block())\n"
             "from kdray.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    cmd = [PY, "-c", probe, "sweep", str(path), "--storage", str(storage), "--teachers-only",
           "--set", "resources.use_gpu=true"]  # use_gpu: the concurrent path (teachers still run on the CPU here)
    first = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "fine-tuning 2 teachers, 2 at a time" in first.stdout
    folders = sorted(p.name.split("-")[0] for p in (storage / "teachers").iterdir() if not p.name.startswith("."))
    assert folders == ["mrpc", "rte"]
    assert not (storage / "prep").exists()  # no trials, no sweep folder
    stamps = {f: f.stat().st_mtime_ns for f in (storage / "teachers").rglob("*") if f.is_file()}
    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "2 teacher(s) ready" in again.stdout
    assert "teacher rte" in again.stdout and "teacher mrpc" in again.stdout
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # found, not fine-tuned again


def test_resume_runs_the_trials_a_grown_file_added_to_the_tune_state(tmp_path: Path, glue_dir: Path,
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    """A grid's Tune state holds the trials it started with. Resumed (Tuner.restore) with a file that gained a
    seed since, the new trial used to be skipped silently (the sweep ended "1 trials (1 finished)"); it now
    runs in a Tuner beside the restored one, and the recorded trial is left as it was."""
    path = space(tmp_path, glue_dir, "grown", {"mode": "grid"}, seeds=(1,))
    storage = tmp_path / "runs"
    assert run_sweep(str(path), storage=str(storage)) == 0
    before = load(storage / "grown")[0]
    assert (storage / "grown" / "tune").is_dir() and len(before) == 1
    capfd.readouterr()
    assert run_sweep(str(path), storage=str(storage), resume=True, overrides={"train.seeds": [1, 2]}) == 0
    out = capfd.readouterr().out
    assert "1 trial(s) of the file were not in the resumed Tune state" in out
    trials = load(storage / "grown")[0]
    assert sorted(trials["seed"]) == [1, 2] and (trials["status"] == "TERMINATED").all()
    old = before["trial_id"].iloc[0]
    assert trials.set_index("trial_id").loc[old, "finished_at"] == before["finished_at"].iloc[0]
    assert len(list((storage / "grown").glob("tune.added-*"))) == 1
    # resumed again with nothing new: both Tuners restored (an interrupted added trial would resume), none added
    assert run_sweep(str(path), storage=str(storage), resume=True, overrides={"train.seeds": [1, 2]}) == 0
    out = capfd.readouterr().out
    assert "not in the resumed Tune state" not in out and out.count("[kdray] resuming ") == 2
    assert "grown/tune.added-" in out
    assert len(load(storage / "grown")[0]) == 2 and len(list((storage / "grown").glob("tune.added-*"))) == 1


def test_resumed_optuna_study_grows_from_what_it_ran(tmp_path: Path, glue_dir: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """A restored Tune search keeps the sample count it started with: `--resume --num-samples` more runs the rest
    in a new study told the finished samples first (it used to end as if the larger study had run); resumed
    again, both are restored and nothing more runs."""
    path = space(tmp_path, glue_dir, "grow", {"mode": "optuna", "num_samples": 1, "seed": 3,
                                              "space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}}})
    storage = str(tmp_path / "runs")
    assert run_sweep(str(path), storage=storage) == 0
    first = load(tmp_path / "runs" / "grow")[0]
    capfd.readouterr()
    assert run_sweep(str(path), storage=storage, resume=True, num_samples=2) == 0
    out = capfd.readouterr().out
    assert "the resumed study ran 1 of the 2 samples asked for" in out and "told the 1 finished ones first" in out
    trials = load(tmp_path / "runs" / "grow")[0]
    assert len(trials) == 2 and trials["trial_id"].is_unique and (trials["status"] == "TERMINATED").all()
    assert first["trial_id"].iloc[0] in set(trials["trial_id"])
    assert run_sweep(str(path), storage=storage, resume=True, num_samples=2) == 0
    out = capfd.readouterr().out
    assert out.count("[kdray] resuming ") == 2 and "samples asked for" not in out
    assert len(load(tmp_path / "runs" / "grow")[0]) == 2


def test_study_history_keeps_finished_samples_with_their_objectives() -> None:
    """The warm start of a grown study: finished samples' searched values and objectives; failed ones and ones
    without the objective (stopped before reporting it) are left out; two objectives give a list."""
    from types import SimpleNamespace

    from kdray.config import SweepConfig, validate
    from kdray.sweep.tuner import study_history

    doc = {"name": "h", "tasks": ["rte"], "search": {"mode": "optuna", "num_samples": 3,
                                                     "space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}}}}
    sweep = validate(SweepConfig, doc, "h")

    def result(lr: float, metrics: dict, error: Exception | None = None) -> SimpleNamespace:
        return SimpleNamespace(config={"train.lr": lr, "other": 1}, metrics=metrics, error=error)

    grid = [result(1e-4, {"dev_score": 0.6, "train_seconds": 3.0}), result(2e-4, {}, RuntimeError("x")),
            result(3e-4, {"train_seconds": 1.0}), result(4e-4, {"dev_score": 0.7, "train_seconds": 2.0})]
    assert study_history([grid], sweep) == ([{"train.lr": 1e-4}, {"train.lr": 4e-4}], [0.6, 0.7])
    multi = validate(SweepConfig, {**doc, "search": {**doc["search"], "multi_objective": True}}, "h")
    assert study_history([grid[:1], grid[3:]], multi)[1] == [[0.6, 3.0], [0.7, 2.0]]
