"""The typed trial's way through Tune without Ray: the trainable's context resolves Tune's config to the Trial
built at the edge, and the recorder rebuilds the RunResult from the trial's last report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kdray.config import ConfigError, load_sweep_config
from kdray.records import RunResult
from kdray.sweep import expand_grid
from kdray.sweep.recorder import trial_row
from kdray.sweep.trial import ERROR_KEY, RECORD_KEY, TrialContext

REPO = Path(__file__).resolve().parents[1]


def _context() -> tuple[TrialContext, list]:
    sweep = load_sweep_config(REPO / "search_spaces" / "smoke.yaml")
    trials = expand_grid(sweep)
    return TrialContext(sweep, None, {t.key: t for t in trials}, {}, "/t", "/trials", "/train", "/sweep"), trials


def test_context_hands_the_trainable_the_trial_built_at_the_edge() -> None:
    ctx, trials = _context()
    for trial in trials:
        assert ctx.resolve({"trial": trial.identity()}, "tune_0") is trial  # the same object: no re-validation
    gone = {**trials[0].identity(), "trial_key": "smoke-rte-s1-0000000000"}
    with pytest.raises(ConfigError, match="no longer in the space file"):
        ctx.resolve({"trial": gone}, "tune_0")
    # a sweep begun by an earlier kdray kept the whole run in Tune's config: validated once, here
    legacy = {**gone, "run": trials[0].run.model_dump()}
    found = ctx.resolve({"trial": legacy}, "tune_0")
    assert found.key == gone["trial_key"] and found.run == trials[0].run


def _result() -> RunResult:
    return RunResult(task="rte", metric_name="accuracy", dev_score=0.5, dev_metrics={"accuracy": 0.5},
                     teacher_score=0.6, method="vanilla_kd", action="soft", knowledge_pool=["finetune", "response"],
                     phase_steps=2, reward_shaping={"reward_set": "train_holdout"}, seed=1, teacher="/t",
                     student="s", student_params=10, train_steps=8, train_seconds=1.0, samples_per_second=64.0,
                     selector_seconds=0.2, final_steps=4, mean_step_seconds=0.1, teacher_cache=True,
                     traces=[{"step": 2, "phase": 0, "episode": -1, "knowledge": "finetune", "weight": 1.0,
                              "reward": 0.0, "q_value": 0.0, "reward_set_loss": 0.7}])


def test_recorder_row_from_the_typed_record() -> None:
    last = {RECORD_KEY: _result().to_json(), "dev_score": 0.5}
    row, traces = trial_row("smoke", "k", "rte", {"selector.name": "vanilla_kd"},
                            RunResult.from_json(last[RECORD_KEY]), last, None, "2026-01-01T00:00:00+00:00",
                            "2026-01-01T00:01:00+00:00")
    assert row["status"] == "TERMINATED" and row["selector.name"] == "vanilla_kd"
    assert (row["selector_seconds"], row["final_steps"], row["mean_step_seconds"], row["teacher_cache"]) == \
        (0.2, 4, 0.1, True)
    assert len(traces) == 1 and traces[0]["trial_id"] == "k" and traces[0]["stage"] == 2


def test_recorder_rows_of_failed_and_stopped_trials() -> None:
    row, traces = trial_row("s", "k", "rte", {}, None, {ERROR_KEY: "FloatingPointError: nan", "dev_score": math.nan},
                            None, "", "2026-01-01T00:01:00+00:00")
    assert (row["status"], row["error"], row["task"], traces) == ("ERROR", "FloatingPointError: nan", "rte", [])
    assert row["started_at"] is None and math.isnan(row["dev_score"])
    row, _ = trial_row("s", "k", "rte", {}, None, {"dev_score": 0.4}, None, "", "2026-01-01T00:01:00+00:00")
    assert (row["status"], row["dev_score"]) == ("STOPPED", 0.4)  # ended early by ASHA


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return math.nan


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_memory_a_trial_thread_freed_goes_back_to_the_os() -> None:
    """What a reused trial process keeps after a trial ran in its own thread, and what release_freed_memory frees:
    400 MB of blocks freed by a thread whose arena is pinned by one surviving small allocation."""
    import ctypes.util
    import threading

    from kdray.sweep.trial import release_freed_memory

    survivors = []

    def trial() -> None:
        blocks = [bytes(4096) for _ in range(100_000)]
        survivors.append(bytes(16))  # allocated last: the top of the thread's heap stays in use
        del blocks

    if ctypes.util.find_library("c") is None or not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim"):
        assert release_freed_memory() is False
        return
    # Trim first: heap an earlier test freed (in CI, 600 MB in this worker) would otherwise take the thread's
    # blocks without RSS growing, and the trim below would then free more than the thread kept.
    release_freed_memory()
    before = _rss_mb()
    thread = threading.Thread(target=trial)
    thread.start()
    thread.join()
    kept = _rss_mb() - before
    assert release_freed_memory() is True
    assert kept > 50 and _rss_mb() - before < kept / 4, (kept, _rss_mb() - before)
