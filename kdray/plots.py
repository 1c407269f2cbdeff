"""Report figures (PNG, matplotlib Agg): selected weights over steps, reward-set loss, and search history.

Kept apart from :mod:`kdray.report` so tables never pay for importing matplotlib or optuna.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kdray.registry import method_label  # noqa: E402
from kdray.results import TRIAL_COLUMNS, scored_trials  # noqa: E402


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def searched_columns(trials: pd.DataFrame) -> list[str]:
    """Searched-parameter columns: the dotted keys appended after the fixed schema."""
    return [c for c in trials.columns if c not in TRIAL_COLUMNS and "." in c]


def _joined(traces: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    keep = ["trial_id", "task", "method", "seed", *searched_columns(trials)]
    ok = trials[trials["status"] != "ERROR"][keep]
    return traces.merge(ok, on="trial_id", how="inner")


def _steps_from_run_start(g: pd.DataFrame) -> pd.DataFrame:
    """Count the final run's steps from its own start: trace steps count stage-1 episodes too.

    A trial's first record is one phase into the run, so the run started one phase length (the gap between
    its first two records) before it.
    """
    def shift(t: pd.DataFrame) -> pd.Series:
        steps = sorted(t["step"].unique())
        phase = steps[1] - steps[0] if len(steps) > 1 else steps[0]
        return t["step"] - (steps[0] - phase)

    g = g.copy()
    g["step"] = g.groupby("trial_id", group_keys=False)[["step"]].apply(shift).squeeze()
    return g


# searched keys that the method name (or the seed average) already accounts for
_NOT_A_SETTING = {"selector.name", "selector.action", "train.seed"}


def setting_panels(g: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``g`` split by the searched values that vary inside it (phase length, pool, ...): one (label, rows) each,
    so a curve averages seeds of one setting only; one ("", g) when nothing else varies."""
    cols = [c for c in g.columns if "." in c and c not in _NOT_A_SETTING and g[c].astype(str).nunique() > 1]
    if not cols:
        return [("", g)]
    keyed = g.assign(_setting=g[cols].astype(str).agg(lambda r: ", ".join(f"{c}={v}" for c, v in zip(cols, r)),
                                                      axis=1))
    return [(str(label), rows.drop(columns="_setting")) for label, rows in keyed.groupby("_setting")]


def plot_weights(trials: pd.DataFrame, traces: pd.DataFrame, out: Path) -> list[Path]:
    """Per task and varying selector: mean (over seeds) weight of each kind against the step, with a band of one
    standard deviation over the seeds; one panel per searched setting (phase length, pool, ...), never averaged
    across settings."""
    written: list[Path] = []
    df = _joined(traces, trials)
    for (task, method), group in df.groupby(["task", "method"]):
        if group.groupby("knowledge")["weight"].nunique().max() <= 1:  # static selectors: nothing to show
            continue
        stage = 2 if (group["stage"] == 2).any() else 1  # the final run; stage-1 episodes only when that is all
        panels = setting_panels(_steps_from_run_start(group[group["stage"] == stage]))
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(7 if cols == 1 else 4.5 * cols, 4 if rows == 1 else 3.2 * rows),
                                 dpi=100, squeeze=False, sharey=True)
        for ax, (setting, g) in zip(axes.flat, panels):
            _weights_panel(ax, g, setting, stage)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.suptitle(f"{task}: {method_label(str(method))} selected weights "
                     f"({'final run' if stage == 2 else 'stage-1 episodes'})", fontsize=10)
        path = out / f"weights_{_safe(str(task))}_{_safe(str(method))}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _weights_panel(ax: Any, g: pd.DataFrame, setting: str, stage: int) -> None:
    """One setting's curves: mean weight per kind over its runs, shaded ±1 std (labelled with the run count)."""
    n_seeds, n_runs = g["seed"].nunique(), g["trial_id"].nunique()
    runs = f"{n_seeds} seed(s)" + (f", {n_runs} runs" if n_runs != n_seeds else "")
    for i, (kind, gk) in enumerate(g.groupby("knowledge")):
        curve = gk.groupby("step")["weight"].agg(["mean", "std"]).sort_index()
        line, = ax.plot(curve.index, curve["mean"], marker="o", markersize=3, label=str(kind))
        band = curve["std"].fillna(0.0)
        ax.fill_between(curve.index, curve["mean"] - band, curve["mean"] + band, alpha=0.15, color=line.get_color(),
                        label=f"±1 std over {runs}" if i == 0 and n_runs > 1 else None)
    ax.set(title=f"{setting + ': ' if setting else ''}mean over {runs}", ylim=(-0.05, 1.05), ylabel="weight",
           xlabel="step of the final run" if stage == 2 else "step of the episode")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def reward_set_loss_curves(trials: pd.DataFrame, traces: pd.DataFrame) -> dict[str, dict[str, tuple[pd.Series, int]]]:
    """task -> method -> (mean reward-set loss by step of the final run, number of runs averaged)."""
    df = _joined(traces, trials)
    df = df[df["reward_set_loss"].notna()]
    out: dict[str, dict[str, tuple[pd.Series, int]]] = {}
    for task, g in df.groupby("task"):
        for method, gm in sorted(g.groupby("method"), key=lambda kv: str(kv[0])):
            stage = 2 if (gm["stage"] == 2).any() else 1
            per_phase = gm[gm["stage"] == stage].drop_duplicates(["trial_id", "stage", "episode", "step"])
            curve = _steps_from_run_start(per_phase).groupby("step")["reward_set_loss"].mean().sort_index()
            out.setdefault(str(task), {})[str(method)] = (curve, per_phase["trial_id"].nunique())
    return out


def plot_reward_set_loss(trials: pd.DataFrame, traces: pd.DataFrame, out: Path) -> list[Path]:
    """Per task: reward-set loss at each phase end, one line per method, every method's final run on one x axis
    (steps from that run's start: actor-critic's stage-1 episodes do not shift its curve)."""
    written: list[Path] = []
    for task, curves in reward_set_loss_curves(trials, traces).items():
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for method, (curve, n) in curves.items():
            ax.plot(curve.index, curve.values, marker=".", label=f"{method_label(method)} (mean of {n} runs)")
        ax.set(title=f"{task}: reward-set loss per phase (final run)", xlabel="step of the final run",
               ylabel="reward-set cross-entropy")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        path = out / f"reward_set_loss_{_safe(str(task))}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _varying(trials: pd.DataFrame) -> list[str]:
    return [c for c in searched_columns(trials) if trials[c].astype(str).nunique() > 1]


def is_search(trials: pd.DataFrame) -> bool:
    """An optimisation history is worth plotting: an optuna sweep, or a searched column that varies."""
    if "search_mode" in trials and (trials["search_mode"] == "optuna").any():
        return True
    return bool(_varying(trials))


def plot_history(trials: pd.DataFrame, out: Path) -> list[Path]:
    """Dev score against trial order (started_at) with the running best, per task."""
    done = scored_trials(trials).sort_values("started_at")
    if done.empty:
        return []
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for task, g in done.groupby("task"):
        idx = np.arange(1, len(g) + 1)
        scores = g["dev_score"].to_numpy(dtype=float) * 100
        pts = ax.scatter(idx, scores, s=18, alpha=0.7, label=f"{task} trials")
        ax.step(idx, np.maximum.accumulate(scores), where="post", color=pts.get_facecolor()[0],
                label=f"{task} running best")
    ax.set(title="Optimisation history", xlabel="trial (by start time)", ylabel="dev score ×100")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = out / "optimisation_history.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return [path]


def param_importances(trials: pd.DataFrame) -> dict[str, float]:
    """fANOVA importances of the searched parameters for dev_score (optuna), {} when not computable."""
    import optuna

    done = scored_trials(trials)
    cols = _varying(done)
    numeric = [c for c in cols if pd.api.types.is_numeric_dtype(done[c])]
    if len(done) < 4 or not numeric:
        return {}
    dists: dict[str, Any] = {}
    for c in cols:
        if c in numeric:
            lo, hi = float(done[c].min()), float(done[c].max())
            dists[c] = optuna.distributions.FloatDistribution(lo, hi)
        else:
            dists[c] = optuna.distributions.CategoricalDistribution(sorted(done[c].astype(str).unique()))
    study = optuna.create_study(direction="maximize")
    for _, r in done.iterrows():
        params = {}
        for c in cols:
            v = r[c]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                break
            params[c] = float(v) if c in numeric else str(v)
        else:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                      value=float(r["dev_score"])))
    if len(study.trials) < 4:
        return {}
    return dict(optuna.importance.get_param_importances(study))


def plot_importance(trials: pd.DataFrame, out: Path) -> list[Path]:
    """Bar chart of parameter importances (needs >= 4 finished trials and a numeric searched column)."""
    imp = param_importances(trials)
    if not imp:
        return []
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3.5, 0.5 * len(names) + 1.5)), dpi=100)
    colors = plt.get_cmap("tab10")(np.arange(len(names)) % 10)
    ax.barh(names, [imp[n] for n in names], color=colors)
    ax.set(title="Parameter importance for dev score (optuna fANOVA)", xlabel="importance")
    path = out / "param_importance.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return [path]


def make_plots(trials: pd.DataFrame, traces: pd.DataFrame, plots_dir: str | Path) -> list[Path]:
    """Every figure the data supports; returns the written paths."""
    out = Path(plots_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if not traces.empty:
        written += plot_weights(trials, traces, out)
        written += plot_reward_set_loss(trials, traces, out)
    if is_search(trials):
        written += plot_history(trials, out)
        written += plot_importance(trials, out)
    return written
