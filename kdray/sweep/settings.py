"""What a recorded trial was run with, so that a resumed sweep never mixes trials run under other settings.

A trial's key names only its task, seed and searched values (committed results and ``--resume`` rely on that),
so a fixed setting edited between sittings (``teacher.epochs`` in ``task_overrides``, ``train.precision``, a
selector default) leaves the key as it was: the recorded trial would be skipped as done and reported beside
trials run under the new setting. Every row of ``trials.parquet`` therefore keeps the trial's settings
(``run_settings``: sorted JSON of its run, without the fields below), and the sweep compares them with what
the space file now gives each recorded key before Ray starts (:func:`check_recorded_settings`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from kdray.config import ConfigError, RunConfig
from kdray.config_paths import flatten_overrides
from kdray.results import TRIALS_FILE, remove_trials

SETTINGS_COLUMN = "run_settings"

# Fields that do not change what a trial computes, or that name a place rather than a setting (a study moved to
# another machine or checkout resolves its relative paths elsewhere): left out of ``run_settings``.
NOT_SETTINGS: frozenset[str] = frozenset({
    "output_dir", "tensorboard_dir",  # where this trial writes
    "data.dir", "data.cache_dir", "teacher.cache_dir", "teacher.finetuned",  # where inputs are found
    "train.seeds",  # the sweep's seed list (adding a seed adds trials); the trial's own is train.seed
    "train.progress", "train.log_every", "train.checkpoint_every", "train.eval_batch_size",  # display, saving
    # where and on how many workers it runs: --resume with other resources continues the sweep (train.precision
    # "auto" resolves by device, so a study that moves between GPU and CPU sets its precision explicitly)
    "resources",
})

# Selector options only the named selectors read: a value pasted for one selector (the schedule search's best
# ``selector.schedule`` into a task's overrides, README "The schedule search") changes nothing another ran.
SELECTOR_OWNED: dict[str, tuple[str, ...]] = {
    "selector.schedule": ("schedule",),
    "selector.dynamic_kd": ("dynamic_kd",),
    "selector.bandit": ("bandit",),
    "selector.weights": ("fixed",),
    "selector.pkd_beta": ("pkd",),
}

SHOWN = 5  # differing keys and trials an error names


def run_settings(run: RunConfig) -> dict[str, Any]:
    """The run's settings that decide its result, as dotted keys (the JSON-compatible dump of the run, without
    :data:`NOT_SETTINGS` and the :data:`SELECTOR_OWNED` options its selector does not read). Mappings that are
    values themselves (``selector.weights``) stay whole, so a weight removed from one is a difference."""
    flat = flatten_overrides(run.model_dump(mode="json"), RunConfig)
    unread = {f for f, owners in SELECTOR_OWNED.items() if run.selector.name not in owners}
    return {k: v for k, v in flat.items() if not any(k == f or k.startswith(f + ".") for f in NOT_SETTINGS | unread)}


def settings_json(run: RunConfig) -> str:
    """``run_settings`` as the sorted JSON string a trials.parquet row holds."""
    return json.dumps(run_settings(run), sort_keys=True)


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: recorded -> current`` for every setting both sides hold with different values.

    A key only one side holds is a setting a newer (or older) kdray added with its default, which by this
    project's rule reproduces the old behaviour: it is not a difference.
    """
    return [f"{k}: {json.dumps(recorded[k])} -> {json.dumps(current[k])}"
            for k in sorted(set(recorded) & set(current)) if recorded[k] != current[k]]


def recorded_settings(sweep_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Trial key -> recorded settings of the rows that have them (rows written before the column have none)."""
    path = Path(sweep_dir) / TRIALS_FILE
    if not path.is_file() or SETTINGS_COLUMN not in pq.read_schema(path).names:
        return {}
    rows = pq.read_table(path, columns=["trial_id", SETTINGS_COLUMN]).to_pylist()
    return {r["trial_id"]: json.loads(r[SETTINGS_COLUMN]) for r in rows if r[SETTINGS_COLUMN]}


def changed_trials(sweep_dir: str | Path, trials: Iterable[Any]) -> dict[str, list[str]]:
    """Recorded trial key -> its differing settings (:func:`differences`), for every trial of ``trials`` (each
    with ``key`` and ``run``) that ``trials.parquet`` holds with other settings."""
    recorded = recorded_settings(sweep_dir)
    changed: dict[str, list[str]] = {}
    for trial in trials:
        if trial.key in recorded:
            diff = differences(recorded[trial.key], run_settings(trial.run))
            if diff:
                changed[trial.key] = diff
    return changed


def check_recorded_settings(sweep_dir: str | Path, trials: Iterable[Any], sweep_name: str) -> None:
    """Refuse to continue a sweep whose recorded trials ran under settings other than its space file now gives them.

    Args:
        sweep_dir: the folder holding ``trials.parquet``.
        trials: the expanded trials (``key`` and ``run`` each); keys the file has not recorded are not checked.
        sweep_name: the sweep's name, for the message.

    Raises:
        ConfigError: naming the differing settings, the trials and what to do instead.
    """
    changed = changed_trials(sweep_dir, trials)
    if not changed:
        return
    keys = sorted(changed)
    lines = sorted({d for k in keys for d in changed[k]})
    raise ConfigError(
        f"sweep {sweep_name}: {len(keys)} trial(s) recorded in {Path(sweep_dir) / TRIALS_FILE} ran with other "
        f"settings than the space file gives them now (e.g. {', '.join(keys[:SHOWN])}); recorded -> now:\n  "
        + "\n  ".join(lines[:SHOWN]) + (f"\n  ... {len(lines) - SHOWN} more" if len(lines) > SHOWN else "")
        + "\nA resume would keep those trials as they are and report them beside trials run the new way. Pass "
          "--rerun-changed to run them again under the new settings (their rows are replaced), resume with the "
          "settings they ran with, or start a new sweep with --name.")


def forget_changed(sweep_dir: str | Path, trials: Iterable[Any]) -> list[str]:
    """``--rerun-changed``: remove the rows and traces of recorded trials whose settings changed, and set the
    grid's Tune state aside (``tune`` -> ``tune.before-rerun-<UTC time>``, kept) so that a fresh Tuner runs them;
    every other recorded trial is still skipped by its row. Call it under the sweep's lock; returns the keys."""
    changed = sorted(changed_trials(sweep_dir, trials))
    if not changed:
        print("[kdray] --rerun-changed: every recorded trial ran with the file's settings; nothing to re-run",
              flush=True)
        return []
    remove_trials(sweep_dir, changed)
    tune_dir = Path(sweep_dir) / "tune"
    if tune_dir.exists():
        tune_dir.rename(tune_dir.with_name(f"tune.before-rerun-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"))
    print(f"[kdray] --rerun-changed: {len(changed)} recorded trial(s) ran with other settings and run again "
          f"({', '.join(changed[:SHOWN])}{', ...' if len(changed) > SHOWN else ''})", flush=True)
    return changed
