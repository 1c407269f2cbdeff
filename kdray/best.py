"""``kdray best``: from a finished search to the grid, as a ``task_overrides:`` block to paste into a space file.

An Optuna search (e.g. ``search_spaces/schedule_search.yaml``) finds per-task values of some keys; the study
that compares methods is a grid whose rows share each task's base run. Pasting the best values under the study's
``task_overrides`` gives its ``{name: schedule}`` row the searched schedule without changing any trial key (keys
hash the searched values and seeds, not task_overrides), and the other selectors ignore ``selector.schedule``.

Reads only trials.parquet (pyarrow/pandas), so it runs where the Parquet files were copied, without Ray.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import yaml

from kdray.results import TRIAL_COLUMNS, TRIALS_FILE

# searched values are rounded for the space file (finer digits are below a short search's resolution), to 3
# decimals but never below 3 significant digits, so that a small searched value (train.lr 1e-4) survives
DECIMALS = 3


def best_rows(trials: pd.DataFrame, metric: str, direction: str = "max") -> dict[str, pd.Series]:
    """Per task, the TERMINATED trial with the best finite ``metric`` (the first recorded wins a tie)."""
    done = trials[(trials["status"] == "TERMINATED") & pd.to_numeric(trials[metric], errors="coerce").notna()]
    out: dict[str, pd.Series] = {}
    for task, group in done.groupby("task", sort=False):
        values = group[metric].astype(float)
        out[str(task)] = group.loc[values.idxmax() if direction == "max" else values.idxmin()]
    return out


def searched_columns(trials: pd.DataFrame, prefix: str) -> list[str]:
    """The searched-parameter columns (every column that is no fixed trials column) under ``prefix``."""
    prefix = prefix.rstrip(".")
    return [c for c in trials.columns
            if c not in TRIAL_COLUMNS and (not prefix or c == prefix or c.startswith(prefix + "."))]


def _value(v: Any) -> Any:
    """A searched value as YAML should show it: floats rounded (:data:`DECIMALS`), numpy scalars made plain."""
    v = v.item() if hasattr(v, "item") else v
    if not isinstance(v, float) or v == 0 or not math.isfinite(v):
        return v
    return round(v, max(DECIMALS, DECIMALS - 1 - math.floor(math.log10(abs(v)))))


def overrides_block(best: dict[str, pd.Series], columns: list[str], metric: str) -> str:
    """The ``task_overrides:`` YAML block: per task a comment (trial id, score), then its searched values."""
    lines = ["task_overrides:"]
    for task, row in best.items():
        lines.append(f"  # {task}: best trial {row['trial_id']}, {metric}={float(row[metric]):.4f}")
        values = {c: _value(row[c]) for c in columns if row[c] is not None and not _is_nan(row[c])}
        lines.append(f"  {task}:" + ("" if values else " {}"))
        lines += [f"    {key}: {_scalar(v)}" for key, v in values.items()]
    return "\n".join(lines)


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _scalar(v: Any) -> str:
    """One YAML scalar (flow style), via yaml so strings and lists stay valid YAML."""
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip()


def best_overrides(sweep_dir: str | Path, metric: str = "holdout_score", prefix: str = "selector.schedule",
                   direction: str = "max") -> str:
    """The ``task_overrides`` block of ``sweep_dir``'s best trials; ValueError (one line) when there is none.

    Args:
        sweep_dir: a sweep folder holding trials.parquet.
        metric: the trials.parquet column the best trial is chosen by.
        prefix: which searched columns to print (dotted key prefix; empty = every searched column).
        direction: ``max`` or ``min`` of ``metric``.
    """
    path = Path(sweep_dir) / TRIALS_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no such file; give the folder of a finished sweep (<storage>/<sweep name>)")
    trials = pq.read_table(path).to_pandas()
    numeric = [c for c in trials.columns if pd.api.types.is_numeric_dtype(trials[c])]
    if metric not in trials.columns:
        raise ValueError(f"{path}: no column {metric!r}; numeric columns: {', '.join(numeric)}")
    columns = searched_columns(trials, prefix)
    if not columns:
        raise ValueError(f"{path}: no searched column under {prefix!r}; searched columns: "
                         f"{', '.join(searched_columns(trials, '')) or 'none'}")
    best = best_rows(trials, metric, direction)
    if not best:
        raise ValueError(f"{path}: no TERMINATED trial with a finite {metric}")
    return overrides_block(best, columns, metric)
