"""Does the bandit's learner predict, and from what? Replay saved stage-1 memories prequentially.

A bandit trial saves its learner (``selector.pt``): every stage-1 transition in raw units, in the
order it was learned. Replaying that memory phase by phase (predict the phase's branches, then
learn from them) reproduces the live run's predictions exactly, and doing it under other
:class:`~kdray.config.BanditConfig` options, or without some transitions, asks what the learner
would have predicted. The answer is an out-of-sample check that costs no training: each phase is
predicted before the learner sees it. It is not a substitute for running the options live, as the
branches a different learner would have explored are not in the memory.

``kdray learner-replay DIR`` reads ``DIR/trials/<trial_id>/{selector.pt,run_record.json}`` (a sweep
folder, or the copies committed under ``results/``; :func:`kdray.selection.bandit_prior.load_learners`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kdray.config import BanditConfig, SelectorConfig, validate
from kdray.prediction import format_r, pearson
from kdray.report_labels import TASK_LABELS, task_order_key
from kdray.selection.bandit import BanditSelector
from kdray.selection.bandit_model import Memory
from kdray.selection.bandit_prior import ReplayedRow, SavedLearner, learn_memory, own_rows


def replay_options(state: dict[str, Any], overrides: dict[str, Any]) -> BanditConfig:
    """The saved options with ``overrides`` applied; keys and values are checked as in a space file."""
    options: BanditConfig = validate(BanditConfig, {**state["options"], **overrides}, "learner-replay --set")
    if options.levels != state["options"]["levels"]:
        raise ValueError("learner-replay: `levels` cannot change in a replay (the stored actions are on its grid)")
    return options


def replay(learner: SavedLearner, overrides: dict[str, Any] | None = None,
           drop_without: list[str] | None = None, prior: list[SavedLearner] | None = None,
           score_with: list[str] | None = None) -> list[ReplayedRow]:
    """Predict-then-learn over the saved memory, phase by phase, under the saved options plus ``overrides``.

    ``drop_without`` removes the transitions whose weighting gives every one of these kinds weight 0
    before replaying (e.g. ``[finetune, response]``: the phases that trained without any label signal).
    ``prior`` learners' memories are learned first (their rows are not scored): a learner that starts from
    other runs' stage-1 data, which asks whether more transitions than one run's would make it predict.
    Phases the learner itself took from ``selector.init_from`` are learned again and not scored either.
    ``score_with`` scores only the rows that give one of these kinds weight, while every row is learned (is a
    correlation carried by a few extreme branches, e.g. those without any label signal?).
    """
    state, pool = learner.state, list(learner.state["pool"])
    options = replay_options(state, overrides or {})
    selector = BanditSelector(pool, SelectorConfig(name="bandit", action=state["action"]), 0, options)
    for other in prior or []:
        keep = [a and b for a, b in zip(_rows_with_any(other.state, pool, drop_without or []), own_rows(other.state))]
        learn_memory(selector, other.state, f"learner-replay: {other.trial_id}", keep)
    return learn_memory(selector, state, f"learner-replay: {learner.trial_id}",
                        _rows_with_any(state, pool, drop_without or []), int(state.get("prior_phases", 0)),
                        _rows_with_any(state, pool, score_with or []))


def _rows_with_any(state: dict[str, Any], pool: list[str], kinds: list[str]) -> list[bool]:
    """Per stored row of ``state``'s memory: whether it gives any of ``kinds`` weight (all rows when none named)."""
    actions = Memory.from_state_dict(state["memory"]).actions
    unknown = [k for k in kinds if k not in pool]
    if unknown:
        raise ValueError(f"learner-replay: kind(s) {unknown} are not in the learner's pool {pool}")
    if not kinds:
        return [True] * actions.shape[0]
    columns = [pool.index(k) for k in kinds]
    return (actions[:, columns] > 0).any(dim=1).tolist()


def _scalar_state(learner: SavedLearner) -> dict[str, Any]:
    """The saved learner's own scalar entries (``prior_phases``: how many phases it took from init_from)."""
    return {k: v for k, v in learner.state.items() if isinstance(v, (int, float, str, bool))}


def record_value(learner: SavedLearner, key: str) -> str:
    """``key`` (dotted, e.g. ``reward_shaping.score``) of the learner's run_record.json, or a scalar entry of its
    selector.pt (``prior_phases``: learners started from ``selector.init_from`` apart from the rest), as text."""
    own = _scalar_state(learner)
    if key in own and key not in learner.record:
        return str(own[key])
    node: Any = learner.record
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(key.split(".")[:i]) or "run_record.json"
            allowed = (", ".join(sorted(node) + (sorted(own) if i == 0 else [])) if isinstance(node, dict)
                       else "(not a mapping)")
            raise ValueError(f"learner-replay --by {key}: {learner.trial_id}'s {where} has no {part!r}; "
                             f"allowed: {allowed}")
        node = node[part]
    return str(node)


def summarise(learners: list[SavedLearner], overrides: dict[str, Any] | None = None,
              drop_without: list[str] | None = None, by: str | None = None,
              cross_seed: bool = False, score_with: list[str] | None = None) -> list[dict[str, Any]]:
    """Per task (and per value of the run_record field ``by``, when given: the arms of a sweep): transitions,
    and the prediction-realised correlation of the decided branches and of all. ``cross_seed``: each learner
    first learns the memories of its group's other seeds (leave one seed out)."""
    keyed = [((learner.task, record_value(learner, by) if by else ""), learner) for learner in learners]
    groups: dict[tuple[str, str], list[tuple[int, list[ReplayedRow]]]] = {}
    for key, learner in keyed:
        prior = [o for k, o in keyed if k == key and o.seed != learner.seed] if cross_seed else None
        groups.setdefault(key, []).append((learner.seed, replay(learner, overrides, drop_without, prior,
                                                                score_with)))
    table = []
    for task, value in sorted(groups, key=lambda k: (task_order_key(k[0]), k[1])):
        runs = sorted(groups[task, value], key=lambda run: run[0])  # by seed; arms may share one
        decided = [[r for r in rows if r.branch == 0] for _, rows in runs]
        everything = [rows for _, rows in runs]
        table.append({"task": task, by or "group": value, "seeds": [s for s, _ in runs],
                      "rows": sum(len(r) for r in everything),
                      "decided": _correlations(decided), "all": _correlations(everything)})
    return table


def _correlations(runs: list[list[ReplayedRow]]) -> tuple[float, list[float]]:
    """Pooled correlation over every run's rows, and one per run."""
    def r(rows: list[ReplayedRow]) -> float:
        return pearson(np.array([x.predicted for x in rows]), np.array([x.realised for x in rows]))
    return r([x for rows in runs for x in rows]), [r(rows) for rows in runs]


def render(table: list[dict[str, Any]], heading: str, by: str | None = None) -> str:
    """A Markdown table of :func:`summarise`'s rows (with a column for ``by`` when it was grouped by one)."""
    def cell(value: tuple[float, list[float]]) -> str:
        pooled, per = value
        return f"{format_r(pooled)} ({', '.join(format_r(v) for v in per)})"
    by_column = f" {by} |" if by else ""
    lines = [f"### {heading}", "", f"| Task |{by_column} seeds | transitions | decided branch | every branch |",
             "|:---|" + (":---|" if by else "") + ":---|---:|---:|---:|"]
    lines += [f"| {TASK_LABELS.get(t['task'], t['task'])} |" + (f" {t[by]} |" if by else "")
              + f" {', '.join(map(str, t['seeds']))} | {t['rows']} | {cell(t['decided'])} | {cell(t['all'])} |"
              for t in table]
    lines += ["", "- Pearson correlation of each transition's prediction (made before the learner saw its phase) "
              "with its realised paired advantage: pooled over seeds (per seed). Decided branch: the weighting "
              "training continued from (the stage-1 Prediction table of `kdray report`); every branch: all the "
              "rows the learner is fitted to."]
    mixed = [TASK_LABELS.get(t["task"], t["task"]) for t in table if len(set(t["seeds"])) < len(t["seeds"])]
    if mixed:
        lines.append(f"- {', '.join(mixed)}: several trials share a seed, so this row pools the arms of a sweep; "
                     "`--by FIELD` (a run_record.json field, e.g. reward_shaping.score) gives each its own row.")
    return "\n".join(lines) + "\n"
