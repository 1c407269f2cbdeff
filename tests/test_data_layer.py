"""GLUE checks beside test_glue.py: the `kdray tasks` command and the reward-set holdout cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdray.cli import main
from kdray.config import DataConfig
from kdray.glue import select_rows


def test_kdray_tasks_prints_every_task(glue_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "--data-dir", str(glue_dir)]) == 0
    out = capsys.readouterr().out
    assert "stsb   pearson/spearman" in out and "train=5749, validation=1500" in out
    assert len(out.strip().splitlines()) == 10  # header + nine tasks


def test_holdout_is_capped_and_never_empty() -> None:
    assert len(select_rows(100_000, DataConfig(), seed=0)[1]) == 1000
    assert len(select_rows(10, DataConfig(), seed=0)[1]) == 1


def test_kdray_tasks_finds_the_shared_folder_without_heavy_imports(glue_dir: Path, tmp_path: Path) -> None:
    """Like the shipped space files, `kdray tasks` reads ../shared/glue by default; it imports neither datasets
    nor torch (5.5 s -> 0.3 s measured), and $KDRAY_GLUE_DIR wins over the default."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    code = ("import sys; from kdray.cli import main; main(['tasks']); "
            "print('heavy' if {'datasets', 'torch'} & set(sys.modules) else 'light')")
    env = {k: v for k, v in os.environ.items() if k != "KDRAY_GLUE_DIR"}
    env["PYTHONPATH"] = str(repo)
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rte    accuracy" in done.stdout and "train=" in done.stdout and done.stdout.strip().endswith("light")
    assert "local GLUE folder:" in done.stderr and "shared/glue" in done.stderr
    env["KDRAY_GLUE_DIR"] = str(tmp_path)  # a folder without GLUE tasks: no counts, from there
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert "train=" not in done.stdout and f"local GLUE folder: {tmp_path}" in done.stderr
