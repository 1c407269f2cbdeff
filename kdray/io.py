"""Crash-safe file primitives: atomic writes, one lock, one short hash.

Every file kdray writes that someone reads later (Parquet results, run records,
checkpoints, caches, teachers) is written beside its destination under a
temporary name, flushed, fsynced where a crash could lose finished work, and
renamed into place: a reader sees the old file or the new one, never half of
one. Temporary names start with ``.`` and end in ``.tmp`` so :func:`clean_stale_temps`
can remove what a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

TMP_SUFFIX = ".tmp"


def short_hash(obj: Any, length: int = 10, algorithm: str = "sha256") -> str:
    """A stable hex digest of ``obj`` as sorted JSON (``str`` for anything JSON cannot hold).

    Keys built with this function name folders and trials that must be found again by a later
    run, so each caller keeps the algorithm and length it has always used.
    """
    payload = obj if isinstance(obj, (bytes, str)) else json.dumps(obj, sort_keys=True, default=str)
    data = payload.encode() if isinstance(payload, str) else payload
    return hashlib.new(algorithm, data).hexdigest()[:length]


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort: some filesystems refuse directory fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Any], None], *, binary: bool = True, fsync: bool = True) -> Path:
    """Call ``write(handle)`` on a temp file beside ``path``, then rename it over ``path``.

    Args:
        path: the destination; its folder is created.
        write: fills the open handle (``pq.write_table(table, fh)``, ``torch.save(obj, fh)``, ...).
        binary: open the temp file in binary mode.
        fsync: flush the data and the rename to disk (results, checkpoints); off only for caches that
            can be rebuilt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; follow the umask like open() does
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(text), binary=False, fsync=fsync)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data), fsync=fsync)


def atomic_write_json(path: str | Path, obj: Any, fsync: bool = True) -> Path:
    """``obj`` as indented, key-sorted JSON (floats that JSON lacks, e.g. numpy's, become ``float``)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n", fsync=fsync)


def atomic_write_parquet(path: str | Path, table: Any) -> Path:
    """A ``pyarrow.Table`` to ``path`` atomically and durably."""
    import pyarrow.parquet as pq

    return atomic_write(path, lambda fh: pq.write_table(table, fh))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically and durably (read back with ``weights_only=True``)."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success it is renamed to ``path``.

    If ``path`` appeared meanwhile (a concurrent builder won the race), the new copy is dropped and
    the existing one kept: callers build deterministic content, so either copy is the same. On an
    exception the temp folder is removed and the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; follow the umask
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.exists():
                raise
        else:
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Concurrent trials wait on it for one build (a teacher, a teacher-output cache) or one append
    (the Parquet results) instead of racing. The lock ends with the process, so a killed holder
    never blocks the next run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class LockHeld(RuntimeError):
    """Another process holds the lock that :func:`try_locked` asked for."""


@contextlib.contextmanager
def try_locked(path: str | Path) -> Iterator[None]:
    """Like :func:`locked`, but raise :class:`LockHeld` at once instead of waiting when another holder has it.

    For work that must not run twice at the same time (one sweep's driver), where waiting would only
    run it twice one after the other.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(str(path)) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def clean_stale_temps(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Remove ``.*.tmp`` files and folders that killed writers left in ``folder`` (and, with ``recursive``,
    in every folder below it).

    Call it only while holding the lock that guards writes to ``folder`` (to all of it, with
    ``recursive``), so a live writer's temp file is never taken.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in list(folder.iterdir()):
        if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            removed += clean_stale_temps(entry, recursive=True)
    return removed


def _read_umask() -> int:
    """The process umask, read once at import (setting and restoring it is the only way to read it,
    and doing that later could race another thread's file creation)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
