"""``kdray reward-noise``: subset rewards compared with the whole reward set's, on real RTE with tiny-bert."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kdray.cli import main
from kdray.config import DataConfig


def test_subset_rewards_against_the_whole_holdout(glue_dir: Path, tmp_path: Path) -> None:
    from kdray.reward_noise import run

    data = DataConfig(source="local", dir=str(glue_dir), max_train_samples=96, holdout_fraction=0.05)
    table = run(["rte"], str(tmp_path / "out"), model="tiny-bert", student_layers=2, steps=8, phase_steps=2,
                max_seq_length=32, subsets=20, data=data, log=lambda _: None)
    holdout = 124  # 5% of RTE's 2,490 train rows, carved before the train subsample
    assert list(table["rows"]) == [32, 64, 96, holdout] and (table["holdout_rows"] == holdout).all()
    assert (table["phases"] == 4).all()
    whole = table.iloc[-1]
    # the whole set against itself: perfect agreement, no noise (a subset of it cannot claim more)
    assert whole.pearson == pytest.approx(1.0) and whole.sign_agreement == 1.0 and whole.relative_noise == 0.0
    subsets = table.iloc[:-1]
    assert (subsets["subsets"] == 20).all() and (subsets["relative_noise"] > 0).all()
    assert (subsets["seconds_per_phase"] > 0).all() and (table["train_step_seconds"] > 0).all()
    written = pd.read_parquet(tmp_path / "out" / "reward_noise.parquet")
    pd.testing.assert_frame_equal(written, table)
    assert "| rte | 124 | 124 | 4 | 1.000 | 1.00 | 0.00 |" in (tmp_path / "out" / "reward_noise.md").read_text()
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_unknown_task_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main(["reward-noise", "rtee"])
    assert err.value.code == 2 and "invalid choice: 'rtee'" in capsys.readouterr().err
