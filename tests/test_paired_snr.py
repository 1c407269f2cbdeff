"""``kdray reward-snr`` on tiny-bert + real RTE: replicates from one fork differ only by dropout (bit-identical
without it, so the restore is exact), candidates differ, the tool writes its rows, bad input is one line."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from kdray.cli import main
from kdray.loop import Loop
from kdray.paired_snr import Plan, branch_losses, run, seed_stability
from kdray.run_setup import set_up

torch.set_num_threads(1)
CANDIDATES = ("all", "finetune", "teacher")


def _no_dropout(model: torch.nn.Module) -> None:
    """Every dropout of ``model`` off (nn.Dropout modules and SDPA attention's dropout_prob)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "dropout_prob"):
            module.dropout_prob = 0.0


def _forked(rte_config: Callable, teacher: str, out: Path, dropout: bool) -> Loop:
    loop = Loop(set_up(rte_config(out, **{"selector.name": "all", "selector.phase_steps": 2,
                                          "train.max_steps": 6}), teacher))
    if not dropout:
        _no_dropout(loop.setup.models.student)
    loop.start_segment(0)
    loop.run_segment(until=2)  # a trained state, at a phase start
    return loop


@pytest.mark.parametrize("dropout", [False, True])
def test_replicates_differ_only_by_dropout(rte_config: Callable, tiny_teacher: str, tmp_path: Path,
                                           dropout: bool) -> None:
    loop = _forked(rte_config, tiny_teacher, tmp_path / "run", dropout)
    before = loop.state.snapshot()
    rows = pd.DataFrame(branch_losses(loop.setup, loop.state, CANDIDATES, 2, seed=1))
    assert len(rows) == 6 and set(rows.boundary) == {2}
    table = rows.pivot(index="replicate", columns="candidate", values="loss_after")
    if dropout:  # the reseeded replicate draws other masks: every candidate's loss moves
        assert all(table[c][0] != table[c][1] for c in CANDIDATES)
    else:  # same fork, same batches, no randomness left: bit for bit
        assert all(table[c][0] == table[c][1] for c in CANDIDATES)
    assert len(set(table.loc[0])) == 3  # the weightings differ
    after = loop.state.snapshot()  # the state is back at the fork
    assert after["step"] == before["step"] == 2
    assert all(torch.equal(after["student"][k], v) for k, v in before["student"].items())


def test_tool_writes_its_rows(glue_dir: Path, tiny_teacher: str, tmp_path: Path) -> None:
    plan = Plan(candidates=CANDIDATES, boundaries=2, steps=4, phase_steps=2, replicates=2)
    data = {"source": "local", "dir": str(glue_dir), "max_train_samples": 64, "max_eval_samples": 32}
    summary = run(["rte"], [tiny_teacher], [1, 2], plan, str(tmp_path / "out"), data, log=lambda _: None,
                  max_seq_length=64)
    rows = pd.read_parquet(tmp_path / "out" / "paired_snr.parquet")
    assert len(rows) == 2 * 2 * 3 * 2  # seeds x boundaries x candidates x replicates
    assert {"task", "seed", "boundary", "candidate", "replicate", "dropout_seed", "loss_before", "loss_after",
            "weights"} <= set(rows.columns)
    assert sorted(set(rows.boundary)) == [0, 2] and set(rows.candidate) == set(CANDIDATES)
    main_run = pd.read_parquet(tmp_path / "out" / "main_run.parquet")
    assert sorted(main_run[main_run.seed == 1].step) == [0, 2, 4]  # the start, then every phase end
    # replicate 0 of the reference runs on the fork's own RNG: the main run's own phase, bit for bit
    ref = rows[(rows.candidate == "all") & (rows.replicate == 0)].set_index(["seed", "boundary"]).loss_after
    ends = main_run.set_index(["seed", "step"]).reward_set_loss
    assert all(ref[(s, b)] == ends[(s, b + 2)] for s, b in ref.index)
    assert len(summary) == 4 and (summary.paired_snr > 0).all() and (summary.unpaired_noise > 0).all()
    text = (tmp_path / "out" / "paired_snr.md").read_text()
    assert "| rte | 2 |" in text and "paired SNR" in text and "unpaired noise = std" in text and "Procedure" in text
    assert "Does the advantage repeat across seeds?" in text and "| rte | 4 | 2 |" in text
    # --resume keeps both recorded runs of this plan and measures nothing; another plan keeps none
    said: list[str] = []
    again = run(["rte"], [tiny_teacher], [1, 2], plan, str(tmp_path / "out"), data, log=said.append, resume=True,
                max_seq_length=64)
    assert said == [] and again.equals(summary)
    other = Plan(candidates=CANDIDATES, boundaries=1, steps=4, phase_steps=2, replicates=2)
    run(["rte"], [tiny_teacher], [1], other, str(tmp_path / "out"), data, log=said.append, resume=True,
        max_seq_length=64)
    assert len(said) == 1 and len(pd.read_parquet(tmp_path / "out" / "paired_snr.parquet")) == 3 * 2


@pytest.mark.parametrize("args, message", [
    (["--candidates", "all,nope"], "unknown candidate 'nope'"),
    (["--boundaries", "0"], "--boundaries must be >= 1"),
    (["--boundaries", "9", "--steps", "20"], "do not fit 20 steps"),
])
def test_bad_input_is_one_line(tiny_teacher: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                               args: list[str], message: str) -> None:
    assert main(["reward-snr", "rte", "--teacher-dir", tiny_teacher, "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_teacher_dir_without_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["reward-snr", "rte", "--teacher-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no config.json there" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _branches(advantage: Callable[[int, int, str], float], seeds: int = 4) -> pd.DataFrame:
    """Branch rows whose reference-minus-candidate advantage is ``advantage(seed, boundary, candidate)``; the two
    replicates differ by a small dropout term that cancels in the replicate mean."""
    rows = []
    for seed in range(1, seeds + 1):
        for boundary in (0, 20, 40):
            for replicate, jitter in ((0, 1e-4), (1, -1e-4)):
                rows.append({"task": "t", "seed": seed, "boundary": boundary, "candidate": "all", "replicate": replicate,
                             "loss_after": 0.5 + jitter})
                for c in ("finetune", "teacher"):
                    rows.append({"task": "t", "seed": seed, "boundary": boundary, "candidate": c,
                                 "replicate": replicate, "loss_after": 0.5 - advantage(seed, boundary, c) + jitter})
    return pd.DataFrame(rows)


def test_seed_stability_separates_a_repeating_advantage_from_a_seed_specific_one() -> None:
    stable = seed_stability(_branches(lambda s, b, c: (b / 40 - 0.5) * (1 if c == "teacher" else -1) * 0.02))
    row = stable.iloc[0]
    assert (row.cells, row.seeds) == (6, 4) and row.mean_advantage == pytest.approx(0.0, abs=1e-12)
    assert row.predictable_share == pytest.approx(1.0) and row.seed_sd == pytest.approx(0.0, abs=1e-9)
    assert row.correlation_ceiling == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noise = {(s, b, c): rng.normal(0, 0.02) for s in range(1, 5) for b in (0, 20, 40) for c in ("finetune", "teacher")}
    seed_only = seed_stability(_branches(lambda s, b, c: noise[(s, b, c)])).iloc[0]
    assert seed_only.predictable_share < 0.3 and seed_only.seed_sd == pytest.approx(0.02, rel=0.5)
    # every candidate a little worse than the reference in every seed: the mean alone is predictable
    offset = seed_stability(_branches(lambda s, b, c: -0.02 + noise[(s, b, c)])).iloc[0]
    assert offset.mean_advantage == pytest.approx(-0.02, abs=0.01) and seed_only.predictable_share < offset.predictable_share < 1
    # ... but a common offset predicts nothing a correlation sees: the ceiling stays where the noise puts it
    assert offset.correlation_ceiling == pytest.approx(seed_only.correlation_ceiling) and seed_only.correlation_ceiling < 0.5
    # half the signal's variance from the cells, half from the seeds: a ceiling near sqrt(1/2)
    rng = np.random.default_rng(1)
    cell = {(b, c): rng.normal(0, 0.02) for b in (0, 20, 40) for c in ("finetune", "teacher")}
    half = {(s, b, c): cell[(b, c)] + rng.normal(0, 0.02) for s in range(1, 41) for b in (0, 20, 40)
            for c in ("finetune", "teacher")}
    mixed = seed_stability(_branches(lambda s, b, c: half[(s, b, c)], seeds=40)).iloc[0]
    assert 0.45 < mixed.correlation_ceiling < 0.9
