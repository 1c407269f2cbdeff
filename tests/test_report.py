"""Report tables and plots from a fixture sweep with known numbers.

Per method offset o and seed index i (0..2), the fixture stores
rte acc = .60+o+.02i, mrpc f1 = .80+o+.02i / acc = .70+o+.02i, stsb pearson = .85+o+.01i / spearman = .83+o+.01i,
so every mean/std below is known by hand. Random-Soft has seeds 0 and 1 only; one AC-Soft trial is an ERROR.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from kdray.report import glue_table, render
from kdray.results import append_trials, append_traces, load, trace_rows, trial_row

OFFSETS = {"finetune": 0.0, "vanilla_kd": 0.01, "random_soft": 0.02, "actor_critic_soft": 0.03}
TEACHER = {"rte": 0.72, "mrpc": 0.86, "stsb": 0.90}


def _metrics(task: str, o: float, i: int) -> tuple[float, dict[str, float]]:
    if task == "rte":
        m = {"accuracy": 0.60 + o + 0.02 * i}
    elif task == "mrpc":
        m = {"f1": 0.80 + o + 0.02 * i, "accuracy": 0.70 + o + 0.02 * i}
    else:
        m = {"pearson": 0.85 + o + 0.01 * i, "spearman": 0.83 + o + 0.01 * i}
    return float(np.mean(list(m.values()))), m


def _traces(method: str, i: int) -> list[dict]:
    rows = []
    for stage_episode in (0, -1):
        for phase in range(6):
            step = 10 * (phase + 1)
            for k, kind in enumerate(("finetune", "response", "feature")):
                if method == "actor_critic_soft":
                    weight = 0.5 + 0.4 * np.sin(phase / 2 + k * 2.0 + i * 0.1)
                else:
                    weight = 1.0 if kind in ("finetune", "response") or method != "vanilla_kd" else 0.0
                rows.append({"step": step, "phase": phase, "episode": stage_episode, "knowledge": kind,
                             "weight": float(weight), "reward": 0.01 * phase, "q_value": 0.1,
                             "reward_set_loss": 0.7 - 0.05 * phase - OFFSETS[method]})
    return rows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("results") / "glue"
    n = 0
    for method, o in OFFSETS.items():
        seeds = (0, 1) if method == "random_soft" else (0, 1, 2)
        for task in ("rte", "mrpc", "stsb"):
            for i in seeds:
                n += 1
                score, m = _metrics(task, o, i)
                result = {"task": task, "metric_name": "/".join(m), "dev_score": score, "dev_metrics": m,
                          "teacher_score": TEACHER[task], "method": method,
                          "action": "soft", "knowledge_pool": ["finetune", "response", "feature"],
                          "phase_steps": 10 if i < 2 else 20, "seed": i, "teacher": f"/teachers/{task}",
                          "reward_shaping": {"reward_set": "train_holdout", "exploration": 0.1 * i, "cost": 0.0,
                                             "normalize": True, "clip": 5.0, "scale": 1.0, "eval_examples": 256}}
                searched = {"selector.reward.exploration": 0.1 * i + 0.05 * o} if method == "actor_critic_soft" else {}
                append_trials(d, [trial_row("glue", f"t{n}", result, searched,
                                            started_at=pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=n))])
                append_traces(d, trace_rows(f"t{n}", _traces(method, i)))
    failed = trial_row("glue", "t_err", {"task": "rte", "method": "actor_critic_soft", "seed": 3}, {},
                       status="ERROR", error="RuntimeError: CUDA OOM")
    append_trials(d, [failed])
    return d


def test_glue_table_numbers(sweep: Path) -> None:
    trials, _ = load(sweep)
    t = glue_table(trials)
    assert list(t.index) == ["Teacher", "Finetune", "Vanilla KD", "Random-Soft", "AC-Soft"]
    assert t.loc["Finetune", "rte"] == pytest.approx(62.0)
    assert t.loc["Finetune", "rte_std"] == pytest.approx(2.0)
    assert t.loc["Random-Soft", "rte_n"] == 2 and t.loc["AC-Soft", "rte_n"] == 3  # the ERROR trial is out
    assert t.loc["AC-Soft", "mrpc"] == pytest.approx(80.0)
    assert t.loc["AC-Soft", "stsb"] == pytest.approx(88.0)
    assert t.loc["Teacher", "rte_n"] == 1  # one distinct teacher per task, not one per trial
    assert t.loc["Teacher", "avg"] == pytest.approx((72 + 86 + 90) / 3)
    assert t.loc["Finetune", "avg"] == pytest.approx((62 + 77 + 85) / 3)
    assert t.loc["AC-Soft", "retention"] == pytest.approx((65 + 80 + 88) / (72 + 86 + 90) * 100)


def test_markdown_table_cells(sweep: Path, tmp_path: Path) -> None:
    text = render(sweep, fmt="md", out=tmp_path / "r.md")
    assert (tmp_path / "r.md").read_text() == text
    main, selection = text.split("### Selection (final run)")  # the main table, then what the selectors chose
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in main.splitlines() if ln.startswith("| ")}
    assert "| AC-Soft | RTE | 3 |" in selection
    # tasks in GLUE order, methods in the paper's order
    assert lines["Method"] == ("| Method | MRPC (F1/acc) | STS-B (Pearson/Spearman) | RTE (acc) | Avg | "
                               "Retention (%) |")
    assert lines["Teacher"] == "| Teacher | 86.0 (n=1) | 90.0 (n=1) | 72.0 (n=1) | 82.7 | – |"
    assert lines["Finetune"] == "| Finetune | 82.0/72.0 ± 2.0 | 86.0/84.0 ± 1.0 | 62.0 ± 2.0 | 74.7 | 90.3 |"
    assert lines["Random-Soft"] == ("| Random-Soft | 83.0/73.0 ± 1.4 (n=2) | 87.5/85.5 ± 0.7 (n=2) | "
                                    "63.0 ± 1.4 (n=2) | 75.8 | 91.7 |")
    assert lines["AC-Soft"] == ("| AC-Soft | **85.0/75.0 ± 2.0** | **89.0/87.0 ± 1.0** | **65.0 ± 2.0** | "
                                "**77.7** | **94.0** |")
    assert list(lines)[1:] == ["Teacher", "Finetune", "Vanilla KD", "Random-Soft", "AC-Soft"]
    assert "1 ERROR trial(s) excluded (AC-Soft/rte: 1)." in text
    assert text.count("**") == 10  # exactly five best cells, all AC-Soft


def test_avg_exclude_keeps_the_column_but_not_the_average(sweep: Path) -> None:
    """A task reported but not counted (RTE with a chance-level teacher) leaves Avg and Retention, and the
    footnote says which; a row missing only that task still gets its Avg."""
    trials, _ = load(sweep)
    t = glue_table(trials, avg_exclude=("rte",))
    assert t.loc["Finetune", "rte"] == pytest.approx(62.0)  # still shown
    assert t.loc["Finetune", "avg"] == pytest.approx((77 + 85) / 2)
    assert t.loc["AC-Soft", "retention"] == pytest.approx((80 + 88) / (86 + 90) * 100)
    partial = trials[~((trials["method"] == "finetune") & (trials["task"] == "rte"))]
    assert glue_table(partial, avg_exclude=("rte",)).loc["Finetune", "avg"] == pytest.approx((77 + 85) / 2)
    assert np.isnan(glue_table(partial).loc["Finetune", "avg"])  # without the option: RTE is missing
    text = render(sweep, avg_exclude="rte")
    assert "over every task but RTE (shown, not counted), only for rows covering those;" in text
    finetune = next(ln for ln in text.splitlines() if ln.startswith("| Finetune |"))
    assert finetune.endswith("| 62.0 ± 2.0 | 81.0 | 92.0 |")  # (77+85)/2, 81/88


def test_avg_exclude_names_the_allowed_tasks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--avg-exclude: unknown task\(s\) rtee; allowed: cola, sst2"):
        render(tmp_path / "nothing-here", avg_exclude="rtee")  # fails before any file is read


def test_latex_and_csv(sweep: Path) -> None:
    tex = render(sweep, fmt="latex")
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert (r"AC-Soft & \textbf{85.0/75.0 $\pm$ 2.0} & \textbf{89.0/87.0 $\pm$ 1.0} & \textbf{65.0 $\pm$ 2.0} & "
            r"\textbf{77.7} & \textbf{94.0} \\") in tex
    assert r"Random-Soft & 83.0/73.0 $\pm$ 1.4 (n=2) &" in tex
    assert "% 1 ERROR trial(s) excluded (AC-Soft/rte: 1)." in tex
    csv = render(sweep, fmt="csv")
    from io import StringIO

    df = pd.read_csv(StringIO(csv), comment="#").set_index("Method")
    assert df.loc["AC-Soft", "RTE (acc)"] == "65.0 ± 2.0*"
    assert df.loc["Finetune", "Avg"] == 74.7 or df.loc["Finetune", "Avg"] == "74.7"
    assert df.loc["Random-Soft", "RTE (acc)"] == "63.0 ± 1.4 (n=2)"
    assert "# 1 ERROR trial(s) excluded (AC-Soft/rte: 1)." in csv
    assert "bold" not in csv and "bold" in render(sweep, fmt="md")  # CSV has no bold to point at
    assert "Selection" not in csv and r"% Selection (final run)" in tex and r"$\to$" in tex


def test_ablation_tables(sweep: Path) -> None:
    text = render(sweep, fmt="md", by="phase_steps").split("### Selection")[0].split("### Prediction")[0]
    rows = [ln for ln in text.splitlines() if ln.startswith("| Finetune")]
    # seeds 0,1 ran phase_steps 10 (rte .60, .62), seed 2 ran 20 (rte .64)
    assert rows == ["| Finetune | 10 | 81.0/71.0 ± 1.4 (n=2) | 85.5/83.5 ± 0.7 (n=2) | 61.0 ± 1.4 (n=2) | 73.8 | 89.3 |",
                    "| Finetune | 20 | 84.0/74.0 (n=1) | 87.0/85.0 (n=1) | 64.0 (n=1) | 76.3 | 92.3 |"]
    reward = render(sweep, fmt="latex", by="reward")
    assert r"train\_holdout, $\beta$=0, cost=0" in reward
    pool = render(sweep, fmt="csv", by="pool")
    assert "finetune+response+feature" in pool
    with pytest.raises(ValueError, match="--by"):
        render(sweep, by="colour")


def test_partial_data_shows_only_what_exists(tmp_path: Path) -> None:
    d = tmp_path / "partial"
    score, m = _metrics("rte", 0.0, 0)
    append_trials(d, [trial_row("p", "a", {"task": "rte", "method": "pkd", "dev_score": score, "dev_metrics": m,
                                            "teacher_score": None, "seed": 1})])
    text = render(d)
    assert "| Teacher" not in text and "MRPC" not in text
    assert "| PKD | 60.0 (n=1) | 60.0 | – |" in text and "**" not in text  # nothing to beat, no bold


def _colours(path: Path) -> int:
    img = mpimg.imread(path)
    return len(np.unique(img.reshape(-1, img.shape[-1]).round(2), axis=0))


def test_plots(sweep: Path, tmp_path: Path) -> None:
    text = render(sweep, plots_dir=tmp_path / "plots")
    files = {p.name for p in (tmp_path / "plots").glob("*.png")}
    expected = {f"weights_{t}_actor_critic_soft.png" for t in ("rte", "mrpc", "stsb")}
    expected |= {f"reward_set_loss_{t}.png" for t in ("rte", "mrpc", "stsb")}
    expected |= {"optimisation_history.png", "param_importance.png"}
    assert files == expected  # no weights plot for selectors whose weights never change
    for name in files:
        path = tmp_path / "plots" / name
        img = mpimg.imread(path)
        assert img.shape[0] >= 300 and img.shape[1] >= 500
        assert _colours(path) >= 8, name
        assert name in text


def test_settings_are_ordered_by_value() -> None:
    """Ablation rows follow the numbers (phase steps 10, 50, 200), not their text (10, 200, 50)."""
    from kdray.report_settings import natural_key as _natural_key

    assert sorted(["200", "50", "10"], key=_natural_key) == ["10", "50", "200"]
    assert sorted(["train_holdout, β=0.5, cost=0", "train_holdout, β=0.01, cost=0", "dev, β=0, cost=0"],
                  key=_natural_key) == ["dev, β=0, cost=0", "train_holdout, β=0.01, cost=0", "train_holdout, β=0.5, cost=0"]
    assert sorted(["n/a", "20", "5"], key=_natural_key) == ["5", "20", "n/a"]


def test_selection_table_summarises_the_final_run(sweep: Path) -> None:
    """Mean weight, within-run std and first/last third per kind, from the final run's phases only."""
    from kdray.report import selection_table
    from kdray.results import load

    table = selection_table(*load(sweep))
    assert set(table["method"]) == {"random_soft", "actor_critic_soft"}  # static selectors are not listed
    row = table[(table.method == "actor_critic_soft") & (table.task == "rte") & (table.knowledge == "finetune")].iloc[0]
    runs = [0.5 + 0.4 * np.sin(np.arange(6) / 2 + i * 0.1) for i in (0, 1, 2)]
    assert row.seeds == 3
    assert row["mean"] == pytest.approx(np.mean([w.mean() for w in runs]))
    assert row.within_run_std == pytest.approx(np.mean([w.std() for w in runs]))
    assert row.first_third == pytest.approx(np.mean([w[:2].mean() for w in runs]))
    assert row.last_third == pytest.approx(np.mean([w[-2:].mean() for w in runs]))
    text = render(sweep)
    assert "### Selection (final run)" in text and "| AC-Soft | RTE | 3 |" in text
    # with --by, one table per setting: the arms of a method are not pooled
    by_phase = render(sweep, by="phase_steps")
    ten, twenty = (by_phase.split(f"### Selection (final run) — Phase steps: {n}\n")[1] for n in (10, 20))
    assert "| AC-Soft | RTE | 2 |" in ten.split("###")[0] and "| AC-Soft | RTE | 1 |" in twenty.split("###")[0]
    assert "### Prediction (does the learner predict its reward?) — Phase steps: 20" in by_phase
    assert "Selection" not in render(sweep, fmt="csv", by="phase_steps")
