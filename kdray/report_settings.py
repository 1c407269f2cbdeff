"""What an ablation table's rows compare (``kdray report --by``, ``--paired METHOD@SETTING``).

A row of a table is a method, or with ``--by`` a (method, setting) pair. A setting is one of the named groupings
below, or any searched parameter: every searched key is its own trials.parquet column, named by its dotted key
(``knowledge.normalize``, ``selector.bandit.explore_scale``), so an ablation of any key can be tabled and paired
without a schema change.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from typing import Any

import pandas as pd

from kdray.results import TRIAL_COLUMNS

Grouper = tuple[str, Callable[[pd.Series], str]]  # (column header, row -> setting label)


def _fmt_num(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _reward_label(rs: Any) -> str:
    if not isinstance(rs, dict):
        return "n/a"
    parts = [str(rs.get("reward_set"))]
    parts.append(f"β={_fmt_num(rs.get('exploration'))}")
    parts.append(f"cost={_fmt_num(rs.get('cost'))}")
    if rs.get("normalize") is False:
        parts.append("raw")
    return ", ".join(parts)


GROUPERS: dict[str, Grouper] = {
    "pool": ("Pool", lambda r: "+".join(r["knowledge_pool"]) if len(r["knowledge_pool"]) else "n/a"),
    "phase_steps": ("Phase steps", lambda r: "n/a" if pd.isna(r["phase_steps"]) else str(int(r["phase_steps"]))),
    "reward": ("Reward (set, β, cost)", lambda r: _reward_label(r["reward_shaping"])),
    "action": ("Action", lambda r: str(r["action"]) if pd.notna(r["action"]) else "n/a"),
}
BY_CHOICES: tuple[str, ...] = ("method", *GROUPERS)


def searched_columns(trials: pd.DataFrame) -> list[str]:
    """The searched parameters recorded in ``trials`` (columns beyond the fixed schema)."""
    return sorted(c for c in trials.columns if c not in TRIAL_COLUMNS and not c.startswith("_"))


def _param_label(column: str) -> Callable[[pd.Series], str]:
    """A searched value as a setting label; a dict-valued key (``selector.weights``, stored as JSON) as
    ``key=value, ...`` in key order, and "n/a" where the trial did not set the key."""
    def label(row: pd.Series) -> str:
        value = row[column]
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "n/a"
        if isinstance(value, str) and value.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if isinstance(value, dict):
            return ", ".join(f"{k}={_fmt_num(v)}" for k, v in sorted(value.items()) if v is not None)
        return _fmt_num(value)
    return label


def grouper(by: str, trials: pd.DataFrame) -> Grouper | None:
    """The grouping ``--by`` names (None for ``method``): a named one, or a searched parameter of ``trials``.

    Raises:
        ValueError: ``by`` is neither, naming what is allowed for these trials.
    """
    if by == "method":
        return None
    if by in GROUPERS:
        return GROUPERS[by]
    params = searched_columns(trials)
    if by in params:
        return by, _param_label(by)
    raise ValueError(f"--by {by!r}: allowed: {', '.join(BY_CHOICES)}, or a searched parameter of these trials"
                     f"{' (' + ', '.join(params) + ')' if params else ' (none was searched here)'}")


def natural_key(text: str) -> tuple[Any, ...]:
    """Order settings as a reader expects: numbers by value (phase steps 10, 50, 200), not as text (10, 200, 50)."""
    return tuple((0, float(part), "") if re.fullmatch(r"\d+(\.\d+)?", part) else (1, 0.0, part)
                 for part in re.split(r"(\d+(?:\.\d+)?)", text) if part)
