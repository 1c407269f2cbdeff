"""A space file's trials, before Ray starts: grid expansion, the Optuna space, and the keys trials are known by.

Every trial is a :class:`Trial`, validated here once: its run is a :class:`~kdray.config.RunConfig` that no
later stage checks or edits again (the trial body only derives a copy with its output folder).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdray.config import ConfigError, RunConfig, SweepConfig
from kdray.config_paths import flatten_overrides
from kdray.config_search import Distribution
from kdray.io import short_hash
from kdray.registry import method_name


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep.

    Attributes:
        key: what ``--resume`` and ``trials.parquet`` know the trial by (``trial_id``).
        task: the GLUE task.
        seed: the run's ``train.seed``.
        repeat: the grid repeat index (``search.num_samples``); 0 for Optuna trials.
        params: the searched values, one dotted key each (one trials.parquet column each).
        run: the validated run settings.
    """

    key: str
    task: str
    seed: int
    repeat: int
    params: dict[str, Any]
    run: RunConfig

    def identity(self) -> dict[str, Any]:
        """What Tune's config holds for a grid trial: everything but the run (status lines stay short)."""
        return {"trial_key": self.key, "task": self.task, "seed": self.seed, "repeat": self.repeat,
                "params": self.params}


def trial_key(sweep_name: str, task: str, seed: int, params: dict[str, Any], repeat: int) -> str:
    """A grid trial's key: the same YAML gives the same keys (committed results and ``--resume`` rely on it)."""
    ident = {"task": task, "seed": seed, "params": params, "repeat": repeat}
    return f"{sweep_name}-{task}-s{seed}-{short_hash(ident, 10, 'sha1')}"


def resolve_paths(sweep: SweepConfig, base: Path) -> SweepConfig:
    """A copy with the file's relative paths made absolute against ``base`` (the YAML's folder): its base
    settings, and the paths a trial's task_overrides or searched values set (its key keeps them as written)."""
    return sweep.resolved_against(base)


def _grid_values(key: str, dist: Distribution, source: str) -> list[Any]:
    if dist.values is not None:
        return dist.values
    raise ConfigError(f"{source}: search.space.{key}: {dist.kind} has no finite values for search.mode grid; "
                      f"use grid/choice lists, or search.mode optuna")


def expand_grid(sweep: SweepConfig, source: str = "<sweep>") -> list[Trial]:
    """Every trial of a grid sweep: tasks x every ``grid``/``choice`` combination x seeds x repeats."""
    keys = list(sweep.search.space)
    value_lists = [_grid_values(k, sweep.search.space[k], source) for k in keys]
    trials = []
    seen: set[str] = set()
    for task in sweep.tasks:
        for combo in itertools.product(*value_lists):
            params = flatten_overrides(dict(zip(keys, combo)), RunConfig)
            for seed in sweep.train.seeds:
                run = sweep.trial_run(task, {**params, "train.seed": seed},
                                      f"{source}: trial {task} seed={seed} {params}")
                # the same run under another value of a key its selector ignores: run once, under the first
                # combination's key (dropping the key from the hash would change every committed trial's key)
                same = short_hash({"task": task, "seed": seed, "params": effective_params(params, run)}, 16)
                if same in seen:
                    continue
                seen.add(same)
                for repeat in range(sweep.search.num_samples):
                    key = trial_key(sweep.name, task, seed, params, repeat)
                    trials.append(Trial(key, task, seed, repeat, params, run))
    return trials


def ignored_keys(run: RunConfig) -> set[str]:
    """Searched keys that ``run``'s selector does not read: ``selector.action`` for selectors whose method is the
    same for both actions (kdray.registry declares which methods an action tells apart)."""
    sel = run.selector
    reads_action = method_name(sel.name, "soft") != method_name(sel.name, "hard")
    return set() if reads_action else {"selector.action"}


def effective_params(params: dict[str, Any], run: RunConfig) -> dict[str, Any]:
    """``params`` without the keys ``run``'s selector ignores: two trials equal here run the same."""
    ignored = ignored_keys(run)
    return {k: v for k, v in params.items() if k not in ignored}


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def tune_space(sweep: SweepConfig) -> dict[str, Any]:
    """The Optuna search space in Tune's terms; list-valued choices (e.g. knowledge.pool) are chosen by index."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, dist in sweep.search.space.items():
        if dist.values is not None:
            values = dist.values
            # Optuna categoricals hold scalars only: lists (e.g. knowledge.pool) are chosen by index.
            space[key] = tune.choice(values if all(_scalar(v) for v in values) else list(range(len(values))))
        elif dist.uniform is not None:
            space[key] = tune.uniform(*dist.uniform)
        elif dist.loguniform is not None:
            space[key] = tune.loguniform(*dist.loguniform)
        else:
            low, high = dist.int  # type: ignore[misc]
            space[key] = tune.randint(low, high + 1)  # inclusive upper bound, as written in the YAML
    return space


def decode_sample(space: dict[str, Distribution], sampled: dict[str, Any]) -> dict[str, Any]:
    """An Optuna sample as searched values: indices of list-valued choices back to their lists, dotted keys."""
    out = {}
    for key, dist in space.items():
        value = sampled[key]
        if dist.values is not None and not all(_scalar(v) for v in dist.values):
            value = dist.values[int(value)]
        out[key] = value
    return flatten_overrides(out, RunConfig)


def tune_identity(sweep: SweepConfig, config: dict[str, Any], task: str | None,
                  tune_trial_id: str) -> tuple[str, str, dict[str, Any]]:
    """(key, task, searched values) of a Tune trial: a grid trial's identity, or an Optuna study's trial id and
    decoded sample (the Tune trial id persists through a restore)."""
    if "trial" in config:
        ident = config["trial"]
        return ident["trial_key"], ident["task"], ident["params"]
    if task is None:
        raise ValueError("an Optuna trial needs its study's task")
    return f"{sweep.name}-{task}-{tune_trial_id}", task, decode_sample(sweep.search.space, config)


def optuna_trial(sweep: SweepConfig, task: str | None, tune_trial_id: str, config: dict[str, Any]) -> Trial:
    """The typed trial of one Optuna sample: its values set once over the task's base run (first seed)."""
    key, task, params = tune_identity(sweep, config, task, tune_trial_id)
    seed = sweep.train.seeds[0]
    run = sweep.trial_run(task, {**params, "train.seed": seed}, f"trial {key}")
    return Trial(key, task, seed, 0, params, run)


def describe(sweep: SweepConfig, trials: list[Trial] | None) -> str:
    """What ``--dry-run`` prints."""
    lines = [f"sweep {sweep.name}: mode={sweep.search.mode} tasks={sweep.tasks} seeds={sweep.train.seeds} "
             f"metric={sweep.search.metric} ({sweep.search.mode_direction})"]
    if trials is not None:
        lines.append(f"{len(trials)} trials")
        for t in trials:
            params = " ".join(f"{k}={v}" for k, v in t.params.items())
            lines.append(f"  {t.key}  task={t.task} seed={t.seed} repeat={t.repeat} {params}")
    else:
        lines.append(f"optuna (TPE, seed {sweep.search.seed}): {sweep.search.num_samples} trials per task, "
                     f"one study per task, seed {sweep.train.seeds[0]}"
                     + (f", objectives {sweep.search.metric} {sweep.search.mode_direction} + train_seconds min"
                        if sweep.search.multi_objective else ""))
        for key, dist in sweep.search.space.items():
            lines.append(f"  {key}: {dist.kind} {getattr(dist, dist.kind)}")
    return "\n".join(lines)
