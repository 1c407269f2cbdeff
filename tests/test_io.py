"""kdray.io: atomic writes leave the old file or the new one, temp names are cleaned, hashes are stable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from kdray import io


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "record.json"
    io.atomic_write_json(target, {"b": 1, "a": 2.5})
    io.atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "trials.parquet"
    io.atomic_write_parquet(target, pa.table({"x": [1]}))

    def boom(handle: object) -> None:
        handle.write(b"half")  # type: ignore[attr-defined]
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        io.atomic_write(target, boom)
    import pyarrow.parquet as pq

    assert pq.read_table(target).to_pylist() == [{"x": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.parquet"]


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    target = io.atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~io._UMASK
    with io.atomic_folder(tmp_path / "folder") as tmp:
        (tmp / "f").write_text("y")
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~io._UMASK


def test_torch_save_round_trips_with_weights_only(tmp_path: Path) -> None:
    path = io.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))


def test_atomic_folder_keeps_a_winner_and_drops_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    with io.atomic_folder(dest) as tmp:
        (tmp / "meta.json").write_text("first")
    with io.atomic_folder(dest) as tmp:  # a concurrent builder lost the race: the first copy stays
        (tmp / "meta.json").write_text("second")
    assert (dest / "meta.json").read_text() == "first"
    with pytest.raises(ValueError), io.atomic_folder(tmp_path / "other") as tmp:
        raise ValueError("build failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_clean_stale_temps_removes_only_temp_names(tmp_path: Path) -> None:
    (tmp_path / ".traces.parquet.abc.tmp").write_bytes(b"")
    (tmp_path / ".teacher.x.tmp").mkdir()
    (tmp_path / "traces.parquet").write_bytes(b"keep")
    removed = io.clean_stale_temps(tmp_path)
    assert len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["traces.parquet"]


def test_short_hash_is_stable_and_matches_the_historic_keys() -> None:
    import hashlib
    import json

    obj = {"task": "rte", "seed": 1, "params": {"a": [1, 2]}}
    legacy = hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]
    assert io.short_hash(obj, 10, "sha1") == legacy
    assert io.short_hash("abc", 16) == hashlib.sha256(b"abc").hexdigest()[:16]


def test_lock_is_exclusive_between_processes(tmp_path: Path) -> None:
    import multiprocessing
    import time

    lock = tmp_path / ".lock"
    marker = tmp_path / "order"
    ctx = multiprocessing.get_context("fork")

    def child() -> None:
        with io.locked(lock):
            with open(marker, "a") as fh:
                fh.write("child\n")

    with io.locked(lock):
        proc = ctx.Process(target=child)
        proc.start()
        time.sleep(0.3)
        with open(marker, "a") as fh:
            fh.write("parent\n")
    proc.join(10)
    assert marker.read_text().split() == ["parent", "child"]
    assert os.path.exists(lock)
