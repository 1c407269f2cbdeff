"""Which GLUE tasks exist and what a local folder holds of them, without importing ``datasets`` or ``torch``
(``kdray tasks`` answers in a fraction of a second)."""

from __future__ import annotations

from pathlib import Path

from kdray.glue.local import count_rows, split_files
from kdray.glue.tasks import TASKS
from kdray.paths import glue_dir_from_env

# where a checkout keeps the official GLUE folder beside the repo (as the shipped space files' data.dir does)
SHARED_GLUE = Path("..") / "shared" / "glue"


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """``data_dir`` if given, else ``$KDRAY_GLUE_DIR``, else None."""
    if data_dir:
        return Path(data_dir).expanduser()
    return glue_dir_from_env()


def find_glue_dir(data_dir: str | Path | None) -> tuple[Path | None, list[str]]:
    """(the folder to read, where it looked): ``data_dir``, ``$KDRAY_GLUE_DIR``, then ``../shared/glue`` from the
    current folder and from the repository; the first that exists wins."""
    given = resolve_data_dir(data_dir)
    tried: list[str] = []
    if given is not None:
        return (given if given.is_dir() else None), [str(given)]
    repo_shared = Path(__file__).resolve().parents[3] / "shared" / "glue"
    for candidate in (SHARED_GLUE, repo_shared):
        tried.append(str(candidate))
        if candidate.is_dir():
            return candidate.resolve(), tried
    return None, ["$KDRAY_GLUE_DIR (unset)", *tried]


def describe_tasks(data_dir: str | Path | None = None) -> list[dict[str, object]]:
    """The nine tasks with metrics, splits and, where a local folder has them, row counts."""
    folder = resolve_data_dir(data_dir)
    rows: list[dict[str, object]] = []
    for spec in TASKS.values():
        counts: dict[str, int] = {}
        if folder is not None:
            for split, name in split_files(spec).items():
                path = folder / spec.glue_dir / name
                if path.is_file():
                    counts[split] = count_rows(path)
        rows.append({"name": spec.name, "metrics": list(spec.metrics), "splits": list(split_files(spec)),
                     "local_rows": counts})
    return rows
