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
