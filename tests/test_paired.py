"""Paired differences (kdray.paired; ``kdray report --paired/--against``) on hand-written sweeps with known
differences, and the errors a bad reference gives."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from kdray.paired import paired_by_key, paired_by_seed, t_interval
from kdray.report import render
from kdray.results import append_trials, load, trial_row

# dev scores by (method, seed); ``all`` is the reference, the others differ from it by known amounts
SCORES = {("all", 1): 0.70, ("all", 2): 0.74, ("all", 3): 0.72,
          ("bandit_soft", 1): 0.71, ("bandit_soft", 2): 0.76, ("bandit_soft", 3): 0.72,
          ("finetune", 1): 0.65, ("finetune", 2): 0.70}


def _sweep(folder: Path, name: str, shift: float = 0.0) -> Path:
    rows = [trial_row(name, f"{name}-mrpc-s{seed}-{method}", {"task": "mrpc", "method": method, "seed": seed,
                                                             "dev_score": score + shift, "metric_name": "f1/accuracy",
                                                             "dev_metrics": {"f1": score, "accuracy": score}})
            for (method, seed), score in SCORES.items()]
    rows.append(trial_row(name, f"{name}-mrpc-s3-finetune", {"task": "mrpc", "method": "finetune", "seed": 3},
                          status="ERROR", error="RuntimeError: boom"))  # an ERROR trial never pairs
    append_trials(folder, rows)
    return folder


def test_t_interval_matches_the_textbook_formula() -> None:
    mean, low, high = t_interval([1.0, 2.0, 6.0])
    half = 4.302652729911275 * math.sqrt(7.0) / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (mean, low, high) == pytest.approx((3.0, 3.0 - half, 3.0 + half))
    assert math.isnan(t_interval([0.5])[1])


def test_paired_by_seed_differences_and_intervals(tmp_path: Path) -> None:
    trials, _ = load(_sweep(tmp_path / "s", "s"))
    table = paired_by_seed(trials, "all").set_index("method")
    assert table.loc["bandit_soft", "per_seed"] == pytest.approx([1.0, 2.0, 0.0])
    assert table.loc["bandit_soft", "n"] == 3 and table.loc["bandit_soft", "mean"] == pytest.approx(1.0)
    assert table.loc["bandit_soft", "low"] < 0 < table.loc["bandit_soft", "high"]
    assert table.loc["finetune", "per_seed"] == pytest.approx([-5.0, -4.0])  # seed 3 is an ERROR: unpaired
    with pytest.raises(ValueError, match=r"--paired vanilla_kd: no finished trial of that METHOD here; there are: finetune, all, bandit_soft"):
        paired_by_seed(trials, "vanilla_kd")


def test_paired_by_key_across_two_sweeps(tmp_path: Path) -> None:
    ours, _ = load(_sweep(tmp_path / "a", "a", shift=0.01))
    theirs, _ = load(_sweep(tmp_path / "b", "b"))
    table = paired_by_key(ours, theirs).set_index("method")
    assert set(table.index) == {"all", "bandit_soft", "finetune"}
    for method in table.index:
        assert table.loc[method, "per_seed"] == pytest.approx([1.0] * table.loc[method, "n"])


def test_report_appends_the_paired_tables(tmp_path: Path) -> None:
    a, b = _sweep(tmp_path / "a", "a", shift=0.01), _sweep(tmp_path / "b", "b")
    text = render(a, paired="all,bandit_soft", against=b)
    assert "### Paired differences against All (by seed)" in text
    assert "### Paired differences against KS-Bandit-Soft (by seed)" in text
    assert "| KS-Bandit-Soft | +1.00 [-1.48, +3.48] (+1.00, +2.00, +0.00) |" in text
    assert "### Paired differences against b (same trial keys)" in text
    assert "| Finetune | +1.00 [+1.00, +1.00] (+1.00, +1.00) |" in text
    cli = subprocess.run([sys.executable, "-m", "kdray", "report", str(a), "--paired", "nope"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert cli.returncode != 0 and "--paired nope: no finished trial of that METHOD here" in cli.stderr


def _normalize_sweep(folder: Path) -> Path:
    """``all`` under three values of a searched key (knowledge.normalize), seeds 1-3, with known differences."""
    shift = {"none": 0.0, "running-loss": 0.02, "gradient-norm": -0.01}
    rows = [trial_row("n", f"n-mrpc-s{seed}-{mode}", {"task": "mrpc", "method": "all", "seed": seed,
                                                      "dev_score": 0.70 + 0.01 * seed + d, "metric_name": "f1/accuracy",
                                                      "dev_metrics": {"f1": 0.7, "accuracy": 0.7}},
                      searched={"knowledge.normalize": mode})
            for seed in (1, 2, 3) for mode, d in shift.items()]
    append_trials(folder, rows)
    return folder


def test_by_a_searched_key_tables_and_pairs_its_settings(tmp_path: Path) -> None:
    trials, _ = load(_normalize_sweep(tmp_path / "n"))
    table = paired_by_seed(trials, "all@none", by="knowledge.normalize").set_index("method")
    assert set(table.index) == {"all@running-loss", "all@gradient-norm"}
    assert table.loc["all@running-loss", "per_seed"] == pytest.approx([2.0, 2.0, 2.0])
    assert table.loc["all@gradient-norm", "mean"] == pytest.approx(-1.0)
    text = render(tmp_path / "n", by="knowledge.normalize", paired="all@none")
    assert "### Ablation by knowledge.normalize" in text and "| All | gradient-norm |" in text
    assert "| All @ running-loss | +2.00 [+2.00, +2.00] (+2.00, +2.00, +2.00) |" in text
    with pytest.raises(ValueError, match=r"--paired all: no finished trial of that METHOD@SETTING \(--by "
                                         r"knowledge.normalize\) here; there are: all@gradient-norm, all@none, "):
        paired_by_seed(trials, "all", by="knowledge.normalize")
    cli = subprocess.run([sys.executable, "-m", "kdray", "report", str(tmp_path / "n"), "--by", "colour"],
                         capture_output=True, text=True, timeout=120, check=False)
    # a dict-valued key (fixed weights, stored as JSON) reads as key=value; `all` has one setting there (n/a)
    rows = [trial_row("w", f"w-mrpc-s{seed}-{method}", {"task": "mrpc", "method": method, "seed": seed,
                                                         "dev_score": 0.70 + 0.01 * seed + d, "metric_name": "f1/accuracy",
                                                         "dev_metrics": {"f1": 0.7, "accuracy": 0.7}},
                      searched=weights)
            for seed in (1, 2, 3) for method, d, weights in (("all", 0.0, {}),
                                                             ("fixed", -0.03, {"selector.weights": {"response": 1,
                                                                                                    "finetune": 0}}))]
    append_trials(tmp_path / "w", rows)
    trials, _ = load(tmp_path / "w")
    by_weights = paired_by_seed(trials, "all", by="selector.weights").set_index("method")
    assert by_weights.loc["fixed@finetune=0, response=1", "per_seed"] == pytest.approx([-3.0, -3.0, -3.0])
    assert "| Fixed @ finetune=0, response=1 | -3.00" in render(tmp_path / "w", by="selector.weights", paired="all")
    assert cli.returncode != 0 and "--by 'colour': allowed: method, pool, phase_steps, reward, action, or a " \
                                   "searched parameter of these trials (knowledge.normalize)" in cli.stderr


def test_reference_from_another_sweep_folder(tmp_path: Path) -> None:
    """An ablation folder's rows against a method of the study folder it varies, paired by task and seed."""
    study = _sweep(tmp_path / "study", "study")
    _normalize_sweep(tmp_path / "n")
    trials, _ = load(tmp_path / "n")
    table = paired_by_seed(trials, "bandit_soft", by="knowledge.normalize",
                           reference_trials=load(study)[0]).set_index("method")
    # n: 0.70 + 0.01 * seed (+ shift); study bandit_soft: 0.71, 0.76, 0.72 for seeds 1-3
    assert table.loc["all@none", "per_seed"] == pytest.approx([0.0, -4.0, 1.0])
    assert table.loc["all@running-loss", "per_seed"] == pytest.approx([2.0, -2.0, 3.0])
    text = render(tmp_path / "n", by="knowledge.normalize", paired=f"{study}:bandit_soft")
    assert "### Paired differences against KS-Bandit-Soft of study (by seed)" in text
    with pytest.raises(ValueError, match=r"--paired pkd: no finished trial of that METHOD there; there are: finetune"):
        paired_by_seed(trials, "pkd", by="knowledge.normalize", reference_trials=load(study)[0])
