"""``selector.init_from`` for the bandit: it learns saved stage-1 memories (a file, or a sweep folder's learners of
the run's task from other seeds) before its first phase, a replay scores only the run's own phases, and a folder
it cannot use is refused before Ray starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from test_learner_replay import live_run, save

from kdray.cli import main
from kdray.config import SelectorConfig
from kdray.learner_replay import replay
from kdray.selection import build_selector
from kdray.selection.bandit import BanditSelector
from kdray.selection.bandit_prior import learn_memory, load_learners
from kdray.selection.synthetic import POOL, PlantedEnv


def folder_of_learners(root: Path) -> Path:
    """STS-B seeds 1 and 2 and MRPC seed 2, 12 planted phases each; and STS-B seed 4 scored with pearson."""
    for task, seed in (("stsb", 1), ("stsb", 2), ("mrpc", 2)):
        save(root, f"{task}-s{seed}", live_run(seed + (5 if task == "mrpc" else 0))[0], task=task, seed=seed)
    save(root, "stsb-pearson-s4", live_run(9)[0], task="stsb", seed=4, score="pearson")
    return root


def continue_live(selector: BanditSelector, seed: int, phases: int = 6) -> tuple[list[float], list[float]]:
    """This run's own stage 1 on the planted environment, after whatever the selector already learned."""
    env, predicted, realised = PlantedEnv(seed), [], []
    for phase in range(phases):
        state = env.state(phase / phases, phase, None, 0.0)
        selector.decide(state)
        branches = selector.branch_weights(3)
        drops = env.drops([np.array(list(w.values())) for w in branches], phase / phases)
        record = selector.observe_branches(state, [(w, d - drops[-1]) for w, d in zip(branches, drops)])
        predicted += [record.extra[f"branch{i}_predicted"] for i in range(2)]
        realised += [record.extra[f"branch{i}_realised"] for i in range(2)]
    return predicted, realised


def test_a_folder_gives_the_tasks_learners_from_other_seeds(tmp_path: Path) -> None:
    folder = folder_of_learners(tmp_path)
    config = SelectorConfig(name="bandit", action="soft", init_from=str(folder))
    started = build_selector(config, list(POOL), 1, task="stsb")
    # only stsb seed 2: not mrpc, not its own seed 1
    assert started.observed == started.prior_phases == 12 and len(started.memory) == 24
    by_hand = BanditSelector(list(POOL), SelectorConfig(name="bandit", action="soft"), 1)
    [stsb2] = [x for x in load_learners(folder) if (x.task, x.seed) == ("stsb", 2)]
    learn_memory(by_hand, stsb2.state, "by hand")
    assert started.posterior.mean.tolist() == by_hand.posterior.mean.tolist()
    assert build_selector(config, list(POOL), 3, task="stsb").prior_phases == 24  # seed 3: both stsb learners
    # targets in another score's units are not learned: a pearson run takes only the pearson learner
    pearson = SelectorConfig.model_validate({"name": "bandit", "init_from": str(folder),
                                             "reward": {"score": "pearson"}})
    assert build_selector(pearson, list(POOL), 3, task="stsb").prior_phases == 12
    with pytest.raises(ValueError, match="its targets are in selector.reward.score pearson, this run's are in ce"):
        build_selector(SelectorConfig(name="bandit", init_from=str(folder / "trials" / "stsb-pearson-s4" /
                                                                   "selector.pt")), list(POOL), 1, task="stsb")
    fresh = build_selector(SelectorConfig(name="bandit", action="soft"), list(POOL), 1, task="stsb")
    assert fresh.prior_phases == 0 and fresh.posterior.mean.tolist() != started.posterior.mean.tolist()


def test_a_replay_reproduces_a_started_run_and_scores_only_its_own_phases(tmp_path: Path) -> None:
    folder = folder_of_learners(tmp_path / "prior")
    selector = build_selector(SelectorConfig(name="bandit", action="soft", init_from=str(folder)), list(POOL), 3,
                              task="stsb")
    predicted, realised = continue_live(selector, 3)
    save(tmp_path / "run", "stsb-s3", selector, task="stsb", seed=3)
    [learner] = load_learners(tmp_path / "run")
    assert learner.state["prior_phases"] == 24
    resumed = BanditSelector(list(POOL), SelectorConfig(name="bandit", action="soft"), 3)
    resumed.load_state_dict(selector.state_dict())  # a resumed run keeps which phases were its own
    assert resumed.prior_phases == 24 and resumed.observed == 30
    rows = replay(learner)
    assert [r.realised for r in rows] == pytest.approx(realised, abs=0)
    assert [r.predicted for r in rows] == pytest.approx(predicted, rel=1e-12, abs=1e-15)
    assert {r.phase for r in rows} == set(range(24, 30))
    # a run started from this learner takes its 6 own phases, not the 24 it learned from seeds 1 and 2
    again = build_selector(SelectorConfig(name="bandit", action="soft", init_from=str(tmp_path / "run")),
                           list(POOL), 1, task="stsb")
    assert again.prior_phases == 6


def test_a_saved_file_is_learned_and_a_learner_it_cannot_read_is_named(tmp_path: Path) -> None:
    folder = folder_of_learners(tmp_path)
    one = folder / "trials" / "stsb-s2" / "selector.pt"
    assert build_selector(SelectorConfig(name="bandit", action="soft", init_from=str(one)), list(POOL), 1,
                          task="stsb").prior_phases == 12
    with pytest.raises(ValueError, match="no saved bandit learner of task rte with selector.reward.score ce from a "
                                         "seed other than 1"):
        build_selector(SelectorConfig(name="bandit", init_from=str(folder)), list(POOL), 1, task="rte")
    with pytest.raises(ValueError, match=r"has pool=.*only learners of one pool"):
        build_selector(SelectorConfig(name="bandit", init_from=str(one)), list(POOL)[:3], 1, task="stsb")
    wide = SelectorConfig.model_validate({"name": "bandit", "init_from": str(one), "bandit": {"features": ["losses"]}})
    with pytest.raises(ValueError, match="were not recorded by the saved learner"):
        build_selector(wide, list(POOL), 1, task="stsb")


def test_a_sweep_whose_bandit_cannot_start_from_the_folder_is_refused_before_ray(
        tmp_path: Path, glue_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = folder_of_learners(tmp_path / "prior")
    doc = {"name": "t", "tasks": ["rte"], "data": {"source": "local", "dir": str(glue_dir)},
           "teacher": {"model": "tiny-bert"}, "student": {"layers": 2}, "train": {"max_steps": 2, "seeds": [1]},
           "selector": {"name": "bandit", "init_from": "prior"}, "knowledge": {"pool": list(POOL)}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))  # init_from relative to the file's folder
    assert main(["sweep", str(path), "--storage", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no saved bandit learner of task rte" in err and str(folder) in err and "Traceback" not in err
    doc["selector"]["init_from"] = "nowhere"
    path.write_text(yaml.safe_dump(doc))
    assert main(["sweep", str(path), "--storage", str(tmp_path / "runs"), "--dry-run"]) == 2
    assert "no such file (a saved selector.pt, or for the bandit a sweep folder)" in capsys.readouterr().err


def test_learner_replay_by_prior_phases_keeps_started_learners_apart(tmp_path: Path, capsys) -> None:
    """One sweep holding both arms (with and without selector.init_from, the same seed): ``--by prior_phases``
    (a selector.pt entry, not a run_record.json field) gives each arm its own row."""
    from kdray.learner_replay import summarise

    prior = folder_of_learners(tmp_path / "prior")
    started = build_selector(SelectorConfig(name="bandit", action="soft", init_from=str(prior)), list(POOL), 3,
                             task="stsb")
    continue_live(started, 3)
    fresh = build_selector(SelectorConfig(name="bandit", action="soft"), list(POOL), 3, task="stsb")
    continue_live(fresh, 3)
    save(tmp_path / "run", "stsb-s3-prior", started, task="stsb", seed=3)
    save(tmp_path / "run", "stsb-s3-none", fresh, task="stsb", seed=3)
    none, with_prior = summarise(load_learners(tmp_path / "run"), by="prior_phases")
    assert (none["prior_phases"], with_prior["prior_phases"]) == ("0", "24")
    assert none["seeds"] == with_prior["seeds"] == [3] and none["rows"] == with_prior["rows"]
    assert main(["learner-replay", str(tmp_path / "run"), "--by", "prior_phase"]) == 2
    assert "allowed: " in (err := capsys.readouterr().err) and "prior_phases" in err and "task" in err
