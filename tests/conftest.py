"""Shared test set-up: offline hub, one torch thread, the real GLUE folder when it is beside the repo, and the
lock that runs `exclusive` tests alone when pytest-xdist runs the suite on two workers (README, Tests)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_GLUE = REPO.parent / "shared" / "glue"


def _lock_path(name: str) -> Path:
    """One lock file per pytest run, shared by its xdist workers: they are the controller's child processes."""
    run = os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()
    return Path(tempfile.gettempdir()) / f"kdray-pytest-{run}.{name}.lock"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Tests marked ``exclusive`` (timing ratios) run with no other test beside them; the rest share.

    A readers-writer lock over setup, call and teardown (so a module fixture such as the quick bench's run is
    inside it), with a turnstile: an exclusive test waiting for the lock holds the turnstile, so the other
    worker cannot keep taking the shared lock between its tests and starve it. Without xdist it is uncontended.
    """
    exclusive = item.get_closest_marker("exclusive") is not None
    with open(_lock_path("turnstile"), "a") as turnstile, open(_lock_path("run"), "a") as run:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if not exclusive:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(run, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if exclusive:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(run, fcntl.LOCK_UN)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller (not an xdist worker) removes the run's lock files."""
    if not hasattr(config, "workerinput"):
        for name in ("turnstile", "run"):
            _lock_path(name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The official GLUE TSV folder beside the repo; tests that need it skip cleanly without it."""
    path = Path(os.environ.get("KDRAY_GLUE_DIR", SHARED_GLUE))
    if not (path / "RTE" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep kdray's caches (tokenized data, tiny models, teachers) out of the user's home."""
    monkeypatch.setenv("KDRAY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kdray_cache"))


@pytest.fixture()
def tiny_teacher(tmp_path: Path) -> str:
    """tiny-bert with a metrics.json, so the loop does not spend teacher forwards on scoring it."""
    import json
    import shutil

    from kdray.models import resolve_model

    folder = tmp_path / "teacher"
    shutil.copytree(resolve_model("tiny-bert"), folder)
    (folder / "metrics.json").write_text(json.dumps({"score": 0.5}))
    return str(folder)


# --------------------------------------------------------------------------- the training loop's builders (kdray.distill,
# kdray.loop, kdray.state): one tiny distillation run on real RTE rows


def rte_run(glue_dir: Path, out: Path, **over: object):
    """A RunConfig of a few tiny-bert steps on 64 real RTE rows; ``over`` sets dotted keys (``train.max_steps``)."""
    from kdray.config import RunConfig

    raw: dict = {
        "task": "rte",
        "data": {"source": "local", "dir": str(glue_dir), "max_train_samples": 64, "max_eval_samples": 32,
                 "holdout_fraction": 0.1},
        "student": {"layers": 2},
        "train": {"max_steps": 8, "batch_size": 8, "eval_batch_size": 32, "max_seq_length": 64, "progress": False,
                  "lr": 1e-3, "warmup_ratio": 0.25},
        "selector": {"name": "random_soft", "phase_steps": 3, "reward": {"eval_examples": 8}},
        "knowledge": {"pool": ["finetune", "response", "feature", "relation"]},
        "output_dir": str(out),
    }
    for key, value in over.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return RunConfig.model_validate(raw)


@pytest.fixture()
def rte_config(glue_dir: Path):
    """``rte_config(out, **dotted_overrides)``: :func:`rte_run` on the real GLUE folder."""
    return lambda out, **over: rte_run(glue_dir, out, **over)


# --------------------------------------------------------------------------- processes and ports (Ray tests)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (for a Ray head and its servers)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc (``Z`` zombie, ...), or ``gone``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return text[text.rindex(")") + 2:].split()[0]
