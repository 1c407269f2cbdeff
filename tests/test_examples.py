"""The shipped example config for `kdray train` loads and runs, and says that it started when bars are off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdray.cli import main
from kdray.config import load_run_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_rte_tiny.yaml"


def test_example_train_config_runs(glue_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = load_run_config(EXAMPLE)
    assert (config.task, config.teacher.model, config.train.progress) == ("rte", "tiny-bert", False)
    code = main(["train", str(EXAMPLE), "--output-dir", str(tmp_path / "run"), "--set", f"data.dir={glue_dir}",
                 "--set", "train.max_steps=6", "--set", "selector.episode_steps=3"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"[kdray] training rte with actor_critic into {tmp_path / 'run'}\n")
    record = json.loads(out.split("\n", 1)[1])
    assert record["task"] == "rte" and 0.0 <= record["dev_score"] <= 1.0
    assert (tmp_path / "run" / "run_record.json").is_file()
