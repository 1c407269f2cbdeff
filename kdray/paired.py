"""Paired differences over seeds (``kdray report --paired REF`` and ``--against DIR``).

Trials of one seed share the data order, the student's initialisation and the teacher, so the difference of two
methods within a seed cancels what the seed contributes; across seeds, the mean of those differences and its
95% t-interval say whether one method beat another beyond seed noise (issues 15 and 16 ask for exactly this).

- ``--paired REF[,REF...]``: every method minus ``REF`` (a ``method`` value of trials.parquet, e.g. ``all``), per
  task, paired by seed; one table per reference. With ``--by`` a row is ``METHOD@SETTING`` and so is ``REF``;
  ``DIR:METHOD`` takes the reference from another sweep folder (an ablation against the study it varies).
- ``--against DIR``: every trial minus the trial with the same key in another sweep folder (e.g. the same grid
  in another precision), per method and task.

A cell reads ``mean [low, high] (per-seed values)``, dev score x 100; the interval is the t-interval of the
mean over n >= 2 pairs (none for one pair). ERROR trials and unpaired seeds are left out.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from kdray.registry import method_label
from kdray.report_labels import method_order_key, task_header, task_order_key
from kdray.report_settings import grouper, natural_key
from kdray.results import load, scored_trials

COLUMNS = ["task", "method", "n", "mean", "low", "high", "per_seed"]


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its two-sided t-interval; (mean, nan, nan) for fewer than two values."""
    x = np.asarray(diffs, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def _row(task: str, method: str, diffs: list[float]) -> dict:
    mean, low, high = t_interval(diffs)
    return {"task": task, "method": method, "n": len(diffs), "mean": mean, "low": low, "high": high,
            "per_seed": list(diffs)}


def row_names(trials: pd.DataFrame, by: str = "method") -> pd.Series:
    """Each trial's row in the paired tables: its method, or ``method@setting`` when ``--by`` names a setting."""
    group = grouper(by, trials)
    if group is None:
        return trials["method"].astype(str)
    return trials["method"].astype(str) + "@" + trials.apply(group[1], axis=1).astype(str)


def row_order_key(row: str) -> tuple:
    method, _, setting = row.partition("@")
    return method_order_key(method), natural_key(setting)


def row_label(row: str) -> str:
    method, at, setting = row.partition("@")
    return method_label(method) + (f" @ {setting}" if at else "")


def _resolve(reference: str, rows_seen: list[str], by: str, where: str) -> str:
    """``reference`` as one of ``rows_seen``; a method with a single setting needs no ``@SETTING``."""
    at_any = [r for r in rows_seen if r.partition("@")[0] == reference]
    if reference not in rows_seen and len(at_any) == 1:
        return at_any[0]
    if reference not in rows_seen:
        what = "METHOD" if by == "method" else f"METHOD@SETTING (--by {by})"
        raise ValueError(f"--paired {reference}: no finished trial of that {what} {where}; "
                         f"there are: {', '.join(rows_seen) or 'none'}")
    return reference


def _named_rows(trials: pd.DataFrame, by: str) -> pd.DataFrame:
    done = scored_trials(trials)
    done["_row"] = row_names(done, by) if not done.empty else pd.Series(dtype=str)
    return done


def paired_by_seed(trials: pd.DataFrame, reference: str, by: str = "method",
                   reference_trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every row (method, or method@setting with ``by``) minus ``reference`` per task, paired by seed (dev x 100).

    With ``reference_trials`` (another sweep folder's trials, e.g. the study an ablation varies), ``reference`` is a
    method there and every row of ``trials`` is compared with it.
    """
    done = _named_rows(trials, by)
    rows_seen = sorted(set(done["_row"]), key=row_order_key)
    if reference_trials is None:
        reference = _resolve(reference, rows_seen, by, "here")
        ref_rows = done
    else:
        ref_rows = _named_rows(reference_trials, "method")
        reference = _resolve(reference, sorted(set(ref_rows["_row"]), key=row_order_key), "method", "there")
    rows = []
    for task, group in done.groupby("task"):
        theirs = ref_rows[ref_rows["task"] == task]
        ref = theirs[theirs["_row"] == reference].groupby("seed")["dev_score"].mean()
        for name in rows_seen:
            if name == reference and reference_trials is None:
                continue
            own = group[group["_row"] == name].groupby("seed")["dev_score"].mean()
            seeds = sorted(set(own.index) & set(ref.index))
            if seeds:
                rows.append(_row(str(task), name, [100 * (own[s] - ref[s]) for s in seeds]))
    return _sorted(pd.DataFrame(rows, columns=COLUMNS))


def paired_by_key(trials: pd.DataFrame, other: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Every trial minus the trial of ``other`` with the same key (``trial_id`` without its sweep name), per row."""
    def keyed(frame: pd.DataFrame, rows_by: str) -> pd.DataFrame:
        done = _named_rows(frame, rows_by)
        done["_key"] = [tid.removeprefix(f"{sweep}-") for tid, sweep in zip(done["trial_id"], done["sweep"])]
        return done
    # rows are named in this folder only: the other need not have searched the --by key
    both = keyed(trials, by).merge(keyed(other, "method")[["_key", "dev_score"]], on="_key", suffixes=("", "_other"))
    rows = [_row(str(task), str(name), list(100 * (g["dev_score"] - g["dev_score_other"])))
            for (task, name), g in both.sort_values("seed").groupby(["task", "_row"])]
    return _sorted(pd.DataFrame(rows, columns=COLUMNS))


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    order = table.assign(_m=table["method"].map(row_order_key), _t=table["task"].map(task_order_key))
    return order.sort_values(["_m", "_t"]).drop(columns=["_m", "_t"]).reset_index(drop=True)


def _cell(row: pd.Series) -> str:
    seeds = ", ".join(f"{v:+.2f}" for v in row["per_seed"])
    interval = "" if math.isnan(row["low"]) else f" [{row['low']:+.2f}, {row['high']:+.2f}]"
    return f"{row['mean']:+.2f}{interval} ({seeds})"


def render_paired(table: pd.DataFrame, title: str, fmt: str = "md") -> str:
    """A method x task table of the cells above (md or LaTeX)."""
    if table.empty:
        return f"### {title}\n\nNo paired trials.\n" if fmt == "md" else f"% {title}: no paired trials\n"
    tasks = sorted(set(table["task"]), key=task_order_key)
    methods = sorted(set(table["method"]), key=row_order_key)
    cells = {(r["method"], r["task"]): _cell(r) for _, r in table.iterrows()}
    headers = ["Method"] + [task_header(t) for t in tasks]
    body = [[row_label(m)] + [cells.get((m, t), "–") for t in tasks] for m in methods]
    note = ("Dev score x 100: mean difference [95% t-interval over the pairs] (per-pair differences, in seed "
            "order); no interval for a single pair.")
    if fmt == "latex":
        lines = [f"% {title}", r"\begin{tabular}{l" + "r" * len(tasks) + "}", r"\toprule",
                 " & ".join(headers) + r" \\", r"\midrule"] + [" & ".join(line) + r" \\" for line in body]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", f"% {note}"]) + "\n"
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|:---|" + "---:|" * len(tasks)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines + ["", f"- {note}"]) + "\n"


def paired_report(trials: pd.DataFrame, reference: str | None, against: str | Path | None,
                  fmt: str = "md", by: str = "method") -> str:
    """The paired tables ``kdray report`` appends to its report of ``trials`` (empty when neither option is given).

    ``reference``: comma-separated ``METHOD`` (``METHOD@SETTING`` with ``by`` naming a setting), or ``DIR:METHOD``
    for a method of another sweep folder, paired by task and seed.
    """
    text = ""
    for ref in [] if reference is None else [r.strip() for r in reference.split(",") if r.strip()]:
        folder, colon, method = ref.rpartition(":")
        if colon:  # DIR:METHOD, the reference from another sweep folder
            title = f"Paired differences against {row_label(method)} of {Path(folder).name} (by seed)"
            table = paired_by_seed(trials, method, by, reference_trials=load(folder)[0])
        else:
            title = f"Paired differences against {row_label(ref)} (by seed)"
            table = paired_by_seed(trials, ref, by)
        text += "\n" + render_paired(table, title, fmt)
    if against is not None:
        other, _ = load(against)
        title = f"Paired differences against {Path(against).name} (same trial keys)"
        text += "\n" + render_paired(paired_by_key(trials, other, by), title, fmt)
    return text
