"""Does the learner predict? Its prediction at decision time against the reward it then received (``kdray report``).

Every learning selector records, per decision, the value it predicted for the action it took (``q_value``) and the
reward that action earned (``reward``), one trace row per kind of the same phase. For the contextual bandit
(γ = 0) the stage-1 reward (the paired branch advantage) is exactly the target its model is fitted to, and a
decision is predicted before the learner has seen that phase, so the correlation of the two is an out-of-sample
check (issue 15 asks for >= 0.5). Final-run decisions, and every actor-critic decision, earn the unpaired
reward-set loss drop, which follows training progress more than the action (results/paired_snr); there a
correlation can come from predicting the trend, and the critic's target also holds the discounted future.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kdray.registry import method_label
from kdray.report_labels import TASK_LABELS, method_order_key, task_order_key
from kdray.results import scored_trials

COLUMNS = ["method", "task", "stage", "n", "r", "per_seed"]
STAGES = {1: "stage 1", 2: "final run"}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN with fewer than 3 points or a constant side (no correlation is defined)."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def prediction_table(trials: pd.DataFrame, traces: pd.DataFrame) -> pd.DataFrame:
    """Per learning method, task and stage: decisions, their pooled prediction-reward correlation, and per seed."""
    if traces.empty or not {"q_value", "reward", "stage"} <= set(traces.columns):
        return pd.DataFrame(columns=COLUMNS)
    done = scored_trials(trials)[["trial_id", "method", "task", "seed"]]
    decisions = (traces.dropna(subset=["q_value", "reward"])
                 .drop_duplicates(subset=["trial_id", "stage", "episode", "phase"])
                 .merge(done, on="trial_id"))
    rows = []
    for (method, task, stage), g in decisions.groupby(["method", "task", "stage"]):
        per_seed = [pearson(s["q_value"].to_numpy(float), s["reward"].to_numpy(float))
                    for _, s in g.sort_values("seed").groupby("seed")]
        rows.append({"method": method, "task": task, "stage": int(stage), "n": len(g),
                     "r": pearson(g["q_value"].to_numpy(float), g["reward"].to_numpy(float)), "per_seed": per_seed})
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty:
        return table
    order = table.assign(_m=table["method"].map(method_order_key), _t=table["task"].map(task_order_key))
    return order.sort_values(["_m", "_t", "stage"]).drop(columns=["_m", "_t"]).reset_index(drop=True)


def format_r(value: float) -> str:
    """A correlation as a signed two-decimal number, an en dash where none is defined."""
    return "–" if math.isnan(value) else f"{value:+.2f}"


def render_prediction(table: pd.DataFrame, fmt: str = "md", part: str = "") -> str:
    """One row per (method, task): each stage's decisions, pooled correlation and per-seed correlations;
    ``part`` names the ``kdray report --by`` setting the table covers in its heading."""
    stages = sorted(set(table["stage"]))
    headers = ["Method", "Task"] + [STAGES.get(s, f"stage {s}") for s in stages]
    body = []
    for (method, task), g in table.groupby(["method", "task"], sort=False):
        cells = {r.stage: f"{format_r(r.r)} (n={r.n}; {', '.join(format_r(v) for v in r.per_seed)})" for r in g.itertuples()}
        body.append([method_label(method), TASK_LABELS.get(task, task)] + [cells.get(s, "–") for s in stages])
    note = ("Pearson correlation of the learner's prediction at decision time (q_value) with the reward that "
            "decision then earned, pooled over seeds (decisions; per seed). KS-Bandit's stage 1: the paired "
            "advantage over the reference branch, its fitted target. Actor-critic runs and every final run: the "
            "unpaired reward-set loss drop, which moves with training progress; a learner whose state sees "
            "progress predicts that trend without telling actions apart (results/paired_snr), and the critic's "
            "own target also holds the discounted future.")
    if fmt == "latex":
        lines = [f"% Prediction (does the learner predict its reward?){part}", r"\begin{tabular}{ll" + "r" * len(stages) + "}",
                 r"\toprule", " & ".join(headers) + r" \\", r"\midrule"] + [" & ".join(b) + r" \\" for b in body]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", f"% {note}"]) + "\n"
    lines = [f"### Prediction (does the learner predict its reward?){part}", "", "| " + " | ".join(headers) + " |",
             "|:---|:---|" + "---:|" * len(stages)] + ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(lines + ["", f"- {note}"]) + "\n"
