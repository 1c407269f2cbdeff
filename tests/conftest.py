"""Shared test set-up: offline hub, one torch thread, the real GLUE folder when it is beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_GLUE = REPO.parent / "shared" / "glue"


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
