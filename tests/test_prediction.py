"""The prediction table of ``kdray report``: the learner's prediction at decision time against the reward it got,
on hand-written traces whose correlations are known, one decision per phase whatever the number of kinds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kdray.prediction import pearson, prediction_table
from kdray.report import render
from kdray.results import append_traces, append_trials, load, trace_rows, trial_row

REWARDS = [0.1, -0.2, 0.3, 0.0, -0.1, 0.2]


def _sweep(folder: Path) -> Path:
    trials, traces = [], []
    for seed, sign in ((1, 1.0), (2, 1.0), (3, -1.0)):  # seed 3's learner predicts the opposite of what it gets
        trial_id = f"p-mrpc-s{seed}"
        trials.append(trial_row("p", trial_id, {"task": "mrpc", "method": "bandit_soft", "seed": seed,
                                                 "dev_score": 0.7, "metric_name": "f1/accuracy",
                                                 "dev_metrics": {"f1": 0.7, "accuracy": 0.7}}))
        rows = []
        for phase, reward in enumerate(REWARDS):
            for kind in ("finetune", "response"):  # one trace row per kind: still one decision
                rows.append({"step": 10 * phase, "phase": phase, "episode": 0, "knowledge": kind, "weight": 0.5,
                             "reward": reward, "q_value": sign * reward + 0.01 * phase, "reward_set_loss": 0.6})
            rows.append({"step": 100 + phase, "phase": phase, "episode": -1, "knowledge": "finetune", "weight": 1.0,
                         "reward": reward, "q_value": 0.5, "reward_set_loss": 0.6})  # a constant prediction
        traces += trace_rows(trial_id, rows)
    trials.append(trial_row("p", "p-mrpc-s4", {"task": "mrpc", "method": "bandit_soft", "seed": 4},
                            status="ERROR", error="boom"))
    traces += trace_rows("p-mrpc-s4", [{"step": 1, "phase": 0, "episode": 0, "knowledge": "finetune",
                                        "reward": 1.0, "q_value": -1.0}])  # an ERROR trial never counts
    append_trials(folder, trials)
    append_traces(folder, traces)
    return folder


def test_prediction_table_counts_decisions_and_correlates_per_seed(tmp_path: Path) -> None:
    trials, traces = load(_sweep(tmp_path / "p"))
    table = prediction_table(trials, traces).set_index("stage")
    stage1 = table.loc[1]
    assert stage1["n"] == 18 and stage1["method"] == "bandit_soft" and stage1["task"] == "mrpc"
    q = np.array([s * r + 0.01 * p for s in (1, 1, -1) for p, r in enumerate(REWARDS)])
    assert stage1["r"] == pytest.approx(pearson(q, np.array(REWARDS * 3)))
    assert stage1["per_seed"][0] == pytest.approx(stage1["per_seed"][1]) and stage1["per_seed"][0] > 0.95
    assert stage1["per_seed"][2] < -0.95
    assert table.loc[2, "n"] == 18 and math.isnan(table.loc[2, "r"])  # a constant prediction has no correlation
    text = render(tmp_path / "p")
    assert "### Prediction (does the learner predict its reward?)" in text
    assert f"| KS-Bandit-Soft | MRPC | {stage1['r']:+.2f} (n=18; " in text


def test_no_learner_no_prediction_table(tmp_path: Path) -> None:
    append_trials(tmp_path, [trial_row("a", "a-mrpc-s1", {"task": "mrpc", "method": "all", "seed": 1,
                                                          "dev_score": 0.7, "metric_name": "f1/accuracy",
                                                          "dev_metrics": {"f1": 0.7, "accuracy": 0.7}})])
    trials, traces = load(tmp_path)
    assert prediction_table(trials, traces).empty and "Prediction" not in render(tmp_path)
    assert math.isnan(pearson(np.array([1.0, 2.0]), np.array([1.0, 3.0])))
