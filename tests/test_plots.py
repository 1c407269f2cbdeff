"""Plots that do not mislead: every method's final run on one x axis, and the weights never averaged across
searched settings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdray.plots import plot_weights, reward_set_loss_curves, setting_panels
from kdray.results import trace_rows, trial_row


def _phases(episodes: int, weight: float = 0.5) -> list[dict]:
    """``episodes`` stage-1 episodes of 4 phases, then a final run of 4 phases (10 steps each, steps counted
    from the trial's start as the loop does); the reward-set loss falls 0.1 per phase of each segment."""
    rows, step = [], 0
    for episode in [*range(episodes), -1]:
        for phase in range(4):
            step += 10
            rows.append({"step": step, "phase": phase, "episode": episode, "knowledge": "response",
                         "weight": weight + 0.1 * phase, "reward_set_loss": 0.9 - 0.1 * phase})
    return rows


def test_reward_set_loss_puts_every_final_run_on_one_axis() -> None:
    trials = pd.DataFrame([trial_row("s", "ac", {"task": "rte", "method": "actor_critic_soft", "seed": 1}),
                           trial_row("s", "kd", {"task": "rte", "method": "vanilla_kd", "seed": 1})])
    traces = pd.DataFrame(trace_rows("ac", _phases(2)) + trace_rows("kd", _phases(0)))
    curves = reward_set_loss_curves(trials, traces)["rte"]
    ac, n_ac = curves["actor_critic_soft"]
    kd, _ = curves["vanilla_kd"]
    assert list(ac.index) == list(kd.index) == [10, 20, 30, 40]  # not 90..120 for actor-critic
    assert list(ac.values) == list(kd.values) and n_ac == 1


def test_weights_are_split_by_searched_setting(tmp_path: Path) -> None:
    rows, traces = [], []
    for n, (phase_steps, seed) in enumerate([(10, 1), (10, 2), (20, 1), (20, 2)]):
        tid = f"t{n}"
        rows.append(trial_row("s", tid, {"task": "rte", "method": "actor_critic_soft", "seed": seed},
                              {"selector.phase_steps": phase_steps, "train.seed": seed}))
        traces += trace_rows(tid, _phases(1, weight=0.2 if phase_steps == 10 else 0.6))
    trials, traces = pd.DataFrame(rows), pd.DataFrame(traces)
    joined = traces.merge(trials[["trial_id", "seed", "selector.phase_steps", "train.seed"]], on="trial_id")
    panels = setting_panels(joined)
    assert [label for label, _ in panels] == ["selector.phase_steps=10", "selector.phase_steps=20"]
    for label, g in panels:  # each panel holds the two seeds of one setting only
        assert g["trial_id"].nunique() == 2 and g["selector.phase_steps"].nunique() == 1
    assert setting_panels(joined[joined["selector.phase_steps"] == 10])[0][0] == ""  # nothing else varies
    assert [p.name for p in plot_weights(trials, traces, tmp_path)] == ["weights_rte_actor_critic_soft.png"]
