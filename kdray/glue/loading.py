"""GLUE splits as ``datasets.DatasetDict``: from the local official layout or the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import datasets

from kdray.glue.catalog import describe_tasks, resolve_data_dir  # noqa: F401  (re-exported)
from kdray.glue.local import read_split, split_files
from kdray.glue.tasks import GlueDataError, TaskSpec, get_task

Source = Literal["auto", "hub", "local"]


def load_task(
    task: str,
    source: Source = "auto",
    data_dir: str | Path | None = None,
    splits: Sequence[str] | None = None,
) -> datasets.DatasetDict:
    """Load ``task``'s splits (``train`` and its dev splits, or ``splits``) with the hub's fields and label ids.

    Args:
        task: a GLUE task name (``rte``, ``sst2``, ...).
        source: ``local`` reads the official TSV layout under ``data_dir`` (or ``$KDRAY_GLUE_DIR``),
            ``hub`` calls ``datasets.load_dataset("nyu-mll/glue", task)``, ``auto`` reads the local
            folder when it has the task's folder (e.g. ``RTE/``), else the hub.
        data_dir: the folder holding ``CoLA/``, ``SST-2/``, ... as in the GLUE download.
        splits: a subset of ``train`` and the task's dev splits; default all of them.

    Returns:
        A DatasetDict whose columns are the hub's text fields plus ``label`` (class id, float for
        STS-B) and ``idx`` (row number in the split).

    Raises:
        GlueDataError: unknown task/split/source, missing folder or file, bad file, hub unreachable.
    """
    spec = get_task(task)
    wanted = list(splits) if splits else ["train", *spec.dev_splits]
    unknown = [s for s in wanted if s not in split_files(spec)]
    if unknown:
        raise GlueDataError(f"{spec.name}: unknown split(s) {unknown}; allowed: {', '.join(split_files(spec))}")
    folder = resolve_data_dir(data_dir)
    if source == "auto":
        source = "local" if folder is not None and (folder / spec.glue_dir).is_dir() else "hub"
    if source == "local":
        return _load_local(spec, folder, wanted)
    if source == "hub":
        local_note = "" if folder is None else f" (auto: {folder / spec.glue_dir} does not exist)"
        return _load_hub(spec, wanted, local_note)
    raise GlueDataError(f"unknown data source {source!r}; allowed: auto, hub, local")


def _load_local(spec: TaskSpec, folder: Path | None, splits: list[str]) -> datasets.DatasetDict:
    if folder is None:
        raise GlueDataError("data.source=local needs data.dir or $KDRAY_GLUE_DIR (a folder in the official GLUE layout)")
    task_dir = folder / spec.glue_dir
    if not task_dir.is_dir():
        raise GlueDataError(f"{task_dir}: missing folder for GLUE task {spec.name}")
    files = split_files(spec)
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(read_split(spec, task_dir / files[split])) for split in splits}
    )


def _load_hub(spec: TaskSpec, splits: list[str], local_note: str = "") -> datasets.DatasetDict:
    try:
        loaded = datasets.load_dataset("nyu-mll/glue", spec.name)
    except Exception as err:  # offline, no cache, hub errors: one clear line instead of a network traceback
        raise GlueDataError(
            f"could not load GLUE task {spec.name} from the hub (nyu-mll/glue){local_note}: {type(err).__name__}: {err}. "
            "Offline? Use data.source=local with data.dir (or $KDRAY_GLUE_DIR) pointing at the official GLUE TSV folder."
        ) from None
    return datasets.DatasetDict({split: loaded[split] for split in splits})
