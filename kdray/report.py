"""Paper-style tables and plots from a sweep's Parquet results (``kdray report``).

Only what is in the data is shown: a row per method (or ablated setting) that has finished trials, a
column per task that has any, mean ± sample std over seeds with the seed count marked when below three.
ERROR trials never enter a number; they are counted in a footnote so a partial sweep reads as one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdray.io import atomic_write_text
from kdray.registry import VARYING_METHODS, method_label
from kdray.report_labels import (
    TASK_LABELS,
    TASK_METRICS,
    method_order_key,
    task_header,
    task_order_key,
)
from kdray.prediction import prediction_table, render_prediction
from kdray.report_settings import grouper, natural_key
from kdray.results import load, scored_trials

TEACHER = "Teacher"  # the reference row: no selector produces it


def _teacher_runs(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct teacher per task (trials of a task share cached teachers)."""
    t = trials[trials["teacher_score"].notna()].copy()
    if t.empty:
        return t
    t["_teacher_key"] = [
        str(teacher) if isinstance(teacher, str) and teacher and teacher != "None" else f"seed={seed}"
        for teacher, seed in zip(t["teacher"], t["seed"])
    ]
    t = t.drop_duplicates(subset=["task", "_teacher_key"])
    t["dev_score"] = t["teacher_score"]
    t["dev_metrics"] = [{} for _ in range(len(t))]  # a teacher's score is its primary metric only
    return t


def _cell_stats(rows: pd.DataFrame, task: str) -> dict[str, Any]:
    scores = rows["dev_score"].astype(float).to_numpy() * 100
    comps: list[float] | None = []
    for _, key in TASK_METRICS.get(task, ()):
        vals = [m.get(key) for m in rows["dev_metrics"]]
        if len(TASK_METRICS.get(task, ())) > 1 and all(v is not None for v in vals):
            comps.append(float(np.mean(vals)) * 100)
        else:
            comps = None
            break
    n = len(scores)
    return {
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores, ddof=1)) if n > 1 else math.nan,
        "n": n,
        "components": comps or None,
    }


def avg_exclusions(tasks: str | None) -> tuple[str, ...]:
    """Parse ``--avg-exclude`` (comma-separated GLUE task names); ValueError naming the option otherwise."""
    names = tuple(t.strip().lower() for t in (tasks or "").split(",") if t.strip())
    unknown = [t for t in names if t not in TASK_LABELS]
    if unknown:
        raise ValueError(f"--avg-exclude: unknown task(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(TASK_LABELS)}")
    return names


def _table_stats(trials: pd.DataFrame, by: str, avg_exclude: tuple[str, ...] = ()
                 ) -> tuple[list[tuple[str, ...]], list[str], dict, dict, list[str]]:
    """Per (row label, task) statistics; row labels are tuples (method[, setting]). Tasks in ``avg_exclude``
    keep their column but stay out of Avg and Retention (a task reported, not counted)."""
    group = grouper(by, trials)
    done = scored_trials(trials)
    tasks = sorted(set(done["task"]) | set(trials.loc[trials["teacher_score"].notna(), "task"]), key=task_order_key)
    cells: dict[tuple[tuple[str, ...], str], dict[str, Any]] = {}
    rows: list[tuple[str, ...]] = []
    teacher = _teacher_runs(trials)
    label_cols = ["Method"] if group is None else ["Method", group[0]]
    if not teacher.empty:
        key = (TEACHER,) if by == "method" else (TEACHER, "")
        rows.append(key)
        for task, g in teacher.groupby("task"):
            cells[(key, task)] = _cell_stats(g, str(task))
    if not done.empty:
        done["_method"] = done["method"].astype(str)
        done["_setting"] = "" if group is None else done.apply(group[1], axis=1)
        for (method, setting), g in sorted(done.groupby(["_method", "_setting"]),
                                           key=lambda kv: (method_order_key(kv[0][0]), natural_key(kv[0][1]))):
            key = (method_label(method),) if by == "method" else (method_label(method), setting)
            rows.append(key)
            for task, gt in g.groupby("task"):
                cells[(key, task)] = _cell_stats(gt, str(task))
    # average (GLUE convention: mean of per-task scores) only for rows that cover every counted task shown
    counted = [t for t in tasks if t not in avg_exclude]
    summary: dict[tuple[str, ...], dict[str, float]] = {}
    for key in rows:
        means = [cells[(key, t)]["mean"] for t in counted if (key, t) in cells]
        summary[key] = {"avg": float(np.mean(means)) if means and len(means) == len(counted) else math.nan}
    t_key = rows[0] if rows and rows[0][0] == TEACHER else None
    for key in rows:
        t_avg = summary[t_key]["avg"] if t_key else math.nan
        avg = summary[key]["avg"]
        summary[key]["retention"] = avg / t_avg * 100 if t_avg and not math.isnan(t_avg) else math.nan
    return rows, tasks, cells, summary, label_cols


def glue_table(trials: pd.DataFrame, by: str = "method", avg_exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """Numbers behind the main table: per row, each task's mean/std/n (×100), avg and retention (%)
    (avg over the tasks not in ``avg_exclude``)."""
    rows, tasks, cells, summary, label_cols = _table_stats(trials, by, avg_exclude)
    records = []
    for key in rows:
        rec: dict[str, Any] = dict(zip(label_cols, key))
        for t in tasks:
            c = cells.get((key, t))
            rec[t] = c["mean"] if c else math.nan
            rec[f"{t}_std"] = c["std"] if c else math.nan
            rec[f"{t}_n"] = c["n"] if c else 0
        rec["avg"] = summary[key]["avg"]
        rec["retention"] = summary[key]["retention"]
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    return df.set_index(label_cols[0] if len(label_cols) == 1 else label_cols) if not df.empty else df


# --------------------------------------------------------------------------- rendering


def _cell_text(c: dict[str, Any] | None) -> tuple[str, str]:
    """(value text, seed-count marker)."""
    if c is None:
        return "–", ""
    value = "/".join(f"{v:.1f}" for v in c["components"]) if c["components"] else f"{c['mean']:.1f}"
    if not math.isnan(c["std"]):
        value += f" ± {c['std']:.1f}"
    marker = f" (n={c['n']})" if c["n"] < 3 else ""
    return value, marker


def _best(values: dict[tuple[str, ...], float]) -> set[tuple[str, ...]]:
    """Row keys holding the best (highest) value of a column; the teacher is a reference, not a contender."""
    vals = {k: v for k, v in values.items() if k[0] != TEACHER and not math.isnan(v)}
    if len(vals) < 2:
        return set()
    top = max(round(v, 1) for v in vals.values())
    return {k for k, v in vals.items() if round(v, 1) == top}


def _escape_latex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
                 ("±", r"$\pm$"), ("β", r"$\beta$"), ("–", "--")):
        s = s.replace(a, b)
    return s


def _footnotes(trials: pd.DataFrame, tasks: list[str], avg_exclude: tuple[str, ...], fmt: str = "md") -> list[str]:
    bold = "" if fmt == "csv" else "; best non-teacher value in bold"  # a CSV cell has no bold
    notes = ["Dev-set scores ×100, mean ± sample std over seeds (± is the std of the task score, the mean "
             f"of the metrics shown); (n=k) marks fewer than 3 seeds{bold}."]
    left_out = [TASK_LABELS.get(t, t) for t in tasks if t in avg_exclude]
    over = ("only for rows covering every task" if not left_out else
            f"over every task but {', '.join(left_out)} (shown, not counted), only for rows covering those")
    notes.append(f"Avg: mean of the task scores (GLUE convention), {over}; "
                 "Retention: Avg / Teacher Avg. Teacher: its task score only, one per distinct teacher.")
    errors = trials[trials["status"] == "ERROR"]
    if len(errors):
        where = ", ".join(f"{method_label(m)}/{t}: {n}" for (m, t), n in
                          errors.groupby(["method", "task"], dropna=False).size().items())
        notes.append(f"{len(errors)} ERROR trial(s) excluded ({where}).")
    missing = trials[(trials["status"] != "ERROR") & trials["dev_score"].isna()]
    if len(missing):
        notes.append(f"{len(missing)} trial(s) without a dev score excluded.")
    if "reward_shaping" in trials and any(isinstance(r, dict) and r.get("reward_set") == "dev"
                                          for r in trials["reward_shaping"]):
        notes.append("Some selectors were rewarded on the dev set (reward_set=dev, the paper's choice): "
                     "their dev scores are optimistic.")
    return notes


def _render_table(trials: pd.DataFrame, fmt: str, by: str, avg_exclude: tuple[str, ...] = ()) -> str:
    rows, tasks, cells, summary, label_cols = _table_stats(trials, by, avg_exclude)
    headers = label_cols + [task_header(t) for t in tasks] + ["Avg", "Retention (%)"]
    best_task = {t: _best({k: cells[(k, t)]["mean"] for k in rows if (k, t) in cells}) for t in tasks}
    best_avg = _best({k: summary[k]["avg"] for k in rows})
    best_ret = _best({k: summary[k]["retention"] for k in rows})
    body: list[list[tuple[str, str, bool]]] = []  # (value, marker, is_best)
    for key in rows:
        line = [(lab, "", False) for lab in key]
        for t in tasks:
            value, marker = _cell_text(cells.get((key, t)))
            line.append((value, marker, key in best_task[t]))
        avg, ret = summary[key]["avg"], summary[key]["retention"]
        line.append(("–" if math.isnan(avg) else f"{avg:.1f}", "", key in best_avg))
        line.append(("–" if math.isnan(ret) or key[0] == TEACHER else f"{ret:.1f}", "", key in best_ret))
        body.append(line)
    notes = _footnotes(trials, tasks, avg_exclude, fmt)
    setting = label_cols[1] if len(label_cols) > 1 else None  # the grouping _table_stats resolved
    title = "Main results" if setting is None else f"Ablation by {setting if '.' in setting else setting.lower()}"
    if fmt == "md":
        def md(c: tuple[str, str, bool]) -> str:
            return (f"**{c[0]}**" if c[2] else c[0]) + c[1]
        out = [f"### {title}", "", "| " + " | ".join(headers) + " |",
               "|" + "|".join([":---"] * len(label_cols) + ["---:"] * (len(headers) - len(label_cols))) + "|"]
        out += ["| " + " | ".join(md(c) for c in line) + " |" for line in body]
        out += [""] + [f"- {n}" for n in notes]
        return "\n".join(out) + "\n"
    if fmt == "latex":
        def tex(c: tuple[str, str, bool]) -> str:
            v = _escape_latex(c[0])
            return (rf"\textbf{{{v}}}" if c[2] else v) + _escape_latex(c[1])
        spec = "l" * len(label_cols) + "r" * (len(headers) - len(label_cols))
        out = [r"% " + title, r"\begin{tabular}{" + spec + "}", r"\toprule",
               " & ".join(_escape_latex(h) for h in headers) + r" \\", r"\midrule"]
        out += [" & ".join(tex(c) for c in line) + r" \\" for line in body]
        out += [r"\bottomrule", r"\end{tabular}"] + [f"% {_escape_latex(n)}" for n in notes]
        return "\n".join(out) + "\n"
    if fmt == "csv":
        df = pd.DataFrame([[c[0] + ("*" if c[2] else "") + c[1] for c in line] for line in body], columns=headers)
        return df.to_csv(index=False) + "".join(f"# {n}\n" for n in notes + ["* = best value in its column"])
    raise ValueError(f"--format must be one of md, latex, csv, got {fmt!r}")


def selection_table(trials: pd.DataFrame, traces: pd.DataFrame) -> pd.DataFrame:
    """What the selectors chose in their final run (stage 2): per method, task and kind, the mean weight over
    phases and seeds, the mean within-run std (how much the choice moves during training), and the mean weight
    in the first and last third of the run. Empty without traces of a varying method (kdray.registry)."""
    columns = ["method", "task", "knowledge", "seeds", "mean", "within_run_std", "first_third", "last_third"]
    if traces.empty or "episode" not in traces:
        return pd.DataFrame(columns=columns)
    done = scored_trials(trials)
    done = done[done["method"].astype(str).isin(VARYING_METHODS)][["trial_id", "method", "task"]]
    final = traces[traces["episode"] == -1].merge(done, on="trial_id")
    if final.empty:
        return pd.DataFrame(columns=columns)
    per_run = []
    for (trial, kind), g in final.groupby(["trial_id", "knowledge"]):
        w = g.sort_values("step")["weight"].to_numpy(dtype=float)
        third = max(1, len(w) // 3)
        per_run.append({"trial_id": trial, "knowledge": kind, "method": g["method"].iat[0], "task": g["task"].iat[0],
                        "mean": w.mean(), "within_run_std": w.std(), "first_third": w[:third].mean(),
                        "last_third": w[-third:].mean()})
    runs = pd.DataFrame(per_run)
    table = runs.groupby(["method", "task", "knowledge"]).agg(
        seeds=("trial_id", "nunique"), mean=("mean", "mean"), within_run_std=("within_run_std", "mean"),
        first_third=("first_third", "mean"), last_third=("last_third", "mean")).reset_index()
    table = table.sort_values(["method", "task", "knowledge"],
                              key=lambda c: c.map(method_order_key) if c.name == "method" else
                              c.map(task_order_key) if c.name == "task" else c)
    return table[columns].reset_index(drop=True)


def _render_selection(table: pd.DataFrame, fmt: str, part: str = "") -> str:
    """The selection table as ``md`` or ``latex``: one row per (method, task), one cell per kind; ``part`` names
    the ``--by`` setting it covers in the heading."""
    kinds = list(dict.fromkeys(table["knowledge"]))
    headers = ["Method", "Task", "Seeds"] + kinds
    body = []
    for (method, task), g in table.groupby(["method", "task"], sort=False):
        cells = {r.knowledge: f"{r.mean:.2f} ±{r.within_run_std:.2f} ({r.first_third:.2f}→{r.last_third:.2f})"
                 for r in g.itertuples()}
        body.append([method_label(method), TASK_LABELS.get(task, task), str(int(g["seeds"].max()))]
                    + [cells.get(k, "–") for k in kinds])
    note = ("Final-run weight per kind: mean over phases and seeds ± mean within-run std over phases "
            "(first third → last third of the run).")
    if fmt == "md":
        out = [f"### Selection (final run){part}", "", "| " + " | ".join(headers) + " |",
               "|" + "|".join([":---"] * 3 + ["---:"] * len(kinds)) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in body]
        return "\n".join(out + ["", f"- {note}"]) + "\n"
    if fmt == "latex":
        out = [f"% Selection (final run){_escape_latex(part)}", r"\begin{tabular}{" + "lll" + "r" * len(kinds) + "}", r"\toprule",
               " & ".join(_escape_latex(h) for h in headers) + r" \\", r"\midrule"]
        out += [" & ".join(_escape_latex(c).replace("→", r"$\to$") for c in line) + r" \\" for line in body]
        return "\n".join(out + [r"\bottomrule", r"\end{tabular}", f"% {_escape_latex(note)}"]) + "\n"
    raise ValueError(f"the selection table is rendered as md or latex, not {fmt!r}")


def _learner_tables(trials: pd.DataFrame, traces: pd.DataFrame, by: str, fmt: str) -> str:
    """The selection and prediction tables; with ``--by``, a pair per setting, so that arms of one method (a
    learner with and without ``selector.init_from``, say) are not pooled."""
    group = grouper(by, trials)
    parts = [("", trials)]
    if group is not None and not trials.empty:
        labels = trials.apply(group[1], axis=1)
        parts = [(f" — {group[0]}: {s}", trials[labels == s]) for s in sorted(set(labels), key=natural_key)]
    text = ""
    for part, rows in parts:
        selection = selection_table(rows, traces)
        if not selection.empty:
            text += "\n" + _render_selection(selection, fmt, part)
        prediction = prediction_table(rows, traces)
        if not prediction.empty:
            text += "\n" + render_prediction(prediction, fmt, part)
    return text


# What the tables read from trials.parquet; a file without them is not a kdray sweep's (or is damaged).
REQUIRED_COLUMNS: tuple[str, ...] = ("trial_id", "status", "task", "method", "dev_score", "dev_metrics",
                                     "teacher_score", "teacher", "seed", "knowledge_pool", "phase_steps",
                                     "reward_shaping", "action")


def _require_columns(trials: pd.DataFrame, results_dir: str | Path) -> None:
    """ValueError naming the file and the missing columns, instead of a KeyError deep in a table."""
    missing = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    if missing:
        raise ValueError(f"{results_dir}: trials.parquet lacks the column(s) {', '.join(missing)}; it is not a "
                         "kdray sweep's trials.parquet (kdray report reads <storage>/<sweep>/trials.parquet)")


def render(results_dir: str | Path, fmt: str = "md", by: str = "method", plots_dir: str | Path | None = None,
           out: str | Path | None = None, paired: str | None = None, against: str | Path | None = None,
           avg_exclude: str | None = None) -> str:
    """The report text for ``kdray report``; also writes it to ``out`` and plots to ``plots_dir`` when given.
    ``paired`` (a method) and ``against`` (another sweep folder) append paired-difference tables
    (:mod:`kdray.paired`; md and LaTeX); ``avg_exclude`` (comma-separated tasks) leaves tasks out of Avg."""
    excluded = avg_exclusions(avg_exclude)  # bad names fail before any file is read
    trials, traces = load(results_dir)
    _require_columns(trials, results_dir)
    text = _render_table(trials, fmt, by, excluded)
    if fmt != "csv":  # a second table would make the CSV unreadable as one frame (the Parquet files hold it all)
        text += _learner_tables(trials, traces, by, fmt)
    if (paired is not None or against is not None) and fmt != "csv":
        from kdray.paired import paired_report

        text += paired_report(trials, paired, against, fmt, by)
    if plots_dir is not None:
        from kdray.plots import make_plots  # matplotlib only when plots are asked for

        written = make_plots(trials, traces, plots_dir)
        listing = ", ".join(p.name for p in written) or "none (no traces or history in these results)"
        text += {"md": f"\nPlots in {plots_dir}: {listing}\n", "latex": f"% plots: {_escape_latex(listing)}\n",
                 "csv": f"# plots: {listing}\n"}[fmt]
    if out is not None:
        try:
            atomic_write_text(out, text)
        except OSError as err:  # one line naming the option, not the temp file or a parent folder
            raise OSError(f"--out {out}: cannot write the report there ({err.strerror or err})") from None
    return text

