"""`kdray learner-replay`: replaying a saved bandit memory reproduces the live predictions exactly, and its
options, row filter and bad input behave as documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdray.cli import main
from kdray.config import BanditConfig, SelectorConfig
from kdray.learner_replay import replay, summarise
from kdray.selection.bandit_prior import load_learners
from kdray.selection.bandit import BanditSelector
from kdray.selection.synthetic import POOL, PlantedEnv


def live_run(seed: int, phases: int = 12, **options) -> tuple[BanditSelector, list[float], list[float]]:
    """A stage-1 run on the planted environment; returns the selector and every stored branch's live prediction
    and realised advantage (the reference branch is not stored, so it is left out)."""
    selector = BanditSelector(list(POOL), SelectorConfig(action="soft"), seed, BanditConfig(**options))
    env, predicted, realised = PlantedEnv(seed), [], []
    for phase in range(phases):
        progress = (phase % 6) / 6
        state = env.state(progress, phase, None, 0.0)
        selector.decide(state)
        branches = selector.branch_weights(3)
        drops = env.drops([np.array(list(w.values())) for w in branches], progress)
        record = selector.observe_branches(state, [(w, d - drops[-1]) for w, d in zip(branches, drops)])
        predicted += [record.extra[f"branch{i}_predicted"] for i in range(2)]
        realised += [record.extra[f"branch{i}_realised"] for i in range(2)]
    return selector, predicted, realised


def save(folder: Path, trial_id: str, selector, task: str = "mrpc", seed: int = 1, score: str = "ce") -> None:
    trial = folder / "trials" / trial_id
    trial.mkdir(parents=True)
    torch.save(selector.state_dict(), trial / "selector.pt")
    (trial / "run_record.json").write_text(json.dumps({"task": task, "seed": seed, "method": "bandit_soft",
                                                       "reward_shaping": {"score": score}}))


def test_replay_reproduces_the_live_predictions_exactly(tmp_path: Path) -> None:
    selector, predicted, realised = live_run(3, features=["progress", "lr", "grad_norms"])
    save(tmp_path, "t1", selector)
    [learner] = load_learners(tmp_path)
    rows = replay(learner)
    assert [r.realised for r in rows] == pytest.approx(realised, abs=0)
    assert [r.predicted for r in rows] == pytest.approx(predicted, rel=1e-12, abs=1e-15)
    assert [r.branch for r in rows] == [0, 1] * 12 and rows[-1].phase == 11
    # another option changes the predictions, but not what was realised
    other = replay(learner, {"prior_precision": 1.0, "features": ["progress"]})
    assert [r.realised for r in other] == [r.realised for r in rows]
    assert [r.predicted for r in other] != [r.predicted for r in rows]


def test_drop_without_leaves_out_the_rows_without_any_of_the_kinds(tmp_path: Path) -> None:
    selector, _, _ = live_run(4)
    save(tmp_path, "t1", selector)
    [learner] = load_learners(tmp_path)
    actions = selector.memory.actions
    lacking = int(((actions[:, 0] == 0) & (actions[:, 1] == 0)).sum())
    assert lacking > 0  # the planted run explores corners without both kinds
    rows = replay(learner, drop_without=["finetune", "response"])
    assert len(rows) == actions.shape[0] - lacking


def test_score_with_scores_a_subset_of_the_same_predictions(tmp_path: Path) -> None:
    selector, _, _ = live_run(4)
    save(tmp_path, "t1", selector)
    [learner] = load_learners(tmp_path)
    every = replay(learner)
    actions = selector.memory.actions
    with_label = ((actions[:, 0] > 0) | (actions[:, 1] > 0)).tolist()
    assert 0 < sum(with_label) < len(with_label)
    scored = replay(learner, score_with=["finetune", "response"])
    assert scored == [row for row, keep in zip(every, with_label) if keep]  # learned from all, scored on some
    assert scored != replay(learner, drop_without=["finetune", "response"])  # unlike dropping the rows


def test_summary_pools_seeds_per_task_and_the_cli_prints_it(tmp_path: Path, capsys) -> None:
    for seed in (1, 2):
        save(tmp_path, f"s{seed}", live_run(seed)[0], task="stsb", seed=seed)
    save(tmp_path, "m1", live_run(5)[0], task="mrpc", seed=1)
    other = tmp_path / "trials" / "not-a-bandit"
    other.mkdir()
    torch.save({"phase": 3}, other / "selector.pt")  # another selector's state is skipped
    [mrpc, stsb] = summarise(load_learners(tmp_path))
    assert (mrpc["task"], stsb["task"], stsb["seeds"], stsb["rows"]) == ("mrpc", "stsb", [1, 2], 48)
    assert len(stsb["decided"][1]) == 2 and -1.0 <= stsb["all"][0] <= 1.0
    assert main(["learner-replay", str(tmp_path), "--set", "pairwise=true", "--drop-without", "finetune",
                 "--score-with", "response"]) == 0
    out = capsys.readouterr().out
    assert "Learner replay (pairwise=True, without rows lacking finetune, scoring only rows with response)" in out and "| STS-B | 1, 2 |" in out


def test_by_splits_a_task_into_the_arms_of_a_sweep(tmp_path: Path, capsys) -> None:
    runs = {(score, seed): live_run(seed + (10 if score == "pearson" else 0))[0]
            for score in ("ce", "pearson") for seed in (1, 2)}
    for (score, seed), selector in runs.items():
        save(tmp_path, f"{score}{seed}", selector, task="stsb", seed=seed, score=score)
    pooled = summarise(load_learners(tmp_path))
    assert [(t["task"], t["seeds"], t["rows"]) for t in pooled] == [("stsb", [1, 1, 2, 2], 96)]
    ce, pearson = summarise(load_learners(tmp_path), by="reward_shaping.score")
    assert (ce["reward_shaping.score"], pearson["reward_shaping.score"]) == ("ce", "pearson")
    assert ce["seeds"] == pearson["seeds"] == [1, 2] and ce["rows"] == pearson["rows"] == 48
    alone = summarise([learner for learner in load_learners(tmp_path) if learner.trial_id.startswith("ce")])
    assert alone[0]["all"] == ce["all"]  # an arm's row is what replaying its trials alone gives
    assert main(["learner-replay", str(tmp_path)]) == 0
    assert "STS-B: several trials share a seed" in capsys.readouterr().out
    assert main(["learner-replay", str(tmp_path), "--by", "reward_shaping.score"]) == 0
    out = capsys.readouterr().out
    assert "| Task | reward_shaping.score | seeds |" in out and "| STS-B | pearson | 1, 2 | 48 |" in out
    assert main(["learner-replay", str(tmp_path), "--by", "reward_shaping.scroe"]) == 2
    err = capsys.readouterr().err
    assert "reward_shaping has no 'scroe'; allowed: score" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "pairwse=true"], "pairwse: unknown key; allowed keys: features, prior_precision"),
    (["--set", "prior_precision=-1"], "prior_precision: Input should be greater than 0"),
    (["--set", "features=[losses]"], "were not recorded"),
    (["--set", "levels=3"], "cannot change"),
    (["--drop-without", "gold"], "not in the learner's pool"),
])
def test_bad_input_is_one_line_naming_the_problem(tmp_path: Path, capsys, args, message) -> None:
    save(tmp_path, "t1", live_run(1, phases=4)[0])
    assert main(["learner-replay", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_without_bandit_learners_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["learner-replay", str(tmp_path)]) == 2
    assert "no bandit selector.pt" in capsys.readouterr().err


COMMITTED = Path(__file__).resolve().parents[1] / "results" / "glue_study"


@pytest.mark.skipif(not (COMMITTED / "trials").is_dir(), reason="results/glue_study/trials is not in this checkout")
def test_committed_learners_reproduce_the_numbers_the_study_readme_quotes() -> None:
    """results/glue_study/README.md quotes these: the Prediction table's stage 1, and the replay findings."""
    learners = load_learners(COMMITTED)

    def pooled(table, which: str) -> list[float]:
        return [round(row[which][0], 2) for row in table]
    as_run = summarise(learners)  # tasks in GLUE order: CoLA, SST-2, MRPC, STS-B, RTE
    assert pooled(as_run, "decided") == [0.33, 0.36, 0.51, -0.05, 0.81]
    assert pooled(as_run, "all") == [0.07, 0.23, 0.24, 0.16, 0.46]
    without = summarise(learners, drop_without=["finetune", "response"])
    assert [row["rows"] for row in without] == [72 - 18, 72 - 14, 72 - 17, 72 - 15, 72 - 17]
    assert pooled(without, "all") == [0.12, 0.23, 0.08, 0.01, 0.57]
    assert pooled(without, "decided") == [0.51, 0.35, -0.08, 0.14, 0.88]
    assert pooled(summarise(learners, {"pairwise": True}), "all") == [0.07, 0.18, 0.20, 0.13, 0.43]
    assert pooled(summarise(learners, {"features": ["progress"]}), "all") == [0.24, 0.03, 0.15, 0.16, 0.51]
    assert pooled(summarise(learners, {"features": []}), "all") == [0.16, -0.05, 0.13, 0.17, 0.39]
    # the learner's prior and warm-up do not change the picture (stop 28; the STS-B section quotes MRPC, STS-B)
    for options, every, decided in [({"prior_precision": 1.0}, [0.09, 0.18, 0.15, 0.16, 0.44],
                                     [0.26, 0.26, 0.44, -0.08, 0.78]),
                                    ({"prior_precision": 100.0}, [0.12, 0.21, 0.24, 0.14, 0.38],
                                     [0.35, 0.38, 0.36, 0.08, 0.60]),
                                    ({"warmup": 0}, [0.08, 0.22, 0.24, 0.18, 0.41], [0.33, 0.33, 0.52, -0.01, 0.74])]:
        table = summarise(learners, options)
        assert pooled(table, "all") == every and pooled(table, "decided") == decided, options
