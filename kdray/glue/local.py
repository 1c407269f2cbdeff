"""Reading the official GLUE TSV release files, quirks included.

Every file is read with quoting disabled (``csv.QUOTE_NONE``), as the release
needs: QNLI has sentences that start with a stray ``"``. CoLA has no header,
MRPC's header starts with a UTF-8 byte-order mark, STS-B's score is the last of
ten columns, and RTE/QNLI/MNLI labels are strings. Rows come out with the
field names and label ids of ``nyu-mll/glue`` on the hub.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Callable

from kdray.glue.tasks import GlueDataError, TaskSpec

csv.field_size_limit(sys.maxsize)

# task -> (has header, {output field: source column (name, or index for headerless CoLA)}, label column)
_LAYOUT: dict[str, tuple[bool, dict[str, Any], Any]] = {
    "cola": (False, {"sentence": 3}, 1),
    "sst2": (True, {"sentence": "sentence"}, "label"),
    "mrpc": (True, {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality"),
    "stsb": (True, {"sentence1": "sentence1", "sentence2": "sentence2"}, -1),
    "qqp": (True, {"question1": "question1", "question2": "question2"}, "is_duplicate"),
    "mnli": (True, {"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label"),
    "qnli": (True, {"question": "question", "sentence": "sentence"}, "label"),
    "rte": (True, {"sentence1": "sentence1", "sentence2": "sentence2"}, "label"),
    "wnli": (True, {"sentence1": "sentence1", "sentence2": "sentence2"}, "label"),
}


def split_files(spec: TaskSpec) -> dict[str, str]:
    """Split name -> file name in the official layout."""
    return {"train": "train.tsv", **dict(spec.dev_files)}


def read_split(spec: TaskSpec, path: Path) -> dict[str, list[Any]]:
    """Read one TSV into columns (text fields, ``label``, ``idx``); errors name the file and line."""
    if not path.is_file():
        raise GlueDataError(f"{path}: missing file for GLUE task {spec.name} (expected the official GLUE layout)")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # utf-8-sig drops MRPC's BOM
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as err:
        raise GlueDataError(f"{path}: not UTF-8 text at byte {err.start} (the GLUE release files are UTF-8)") from None
    has_header, fields, label_col = _LAYOUT[spec.name]
    if not rows or (has_header and len(rows) == 1):
        raise GlueDataError(f"{path}: empty file (no data rows)")
    header = rows[0] if has_header else None
    body = rows[1:] if has_header else rows
    index = _column_index(path, header, [*fields.values(), label_col])
    parse_label = _label_parser(spec, path)
    out: dict[str, list[Any]] = {name: [] for name in fields} | {"label": [], "idx": []}
    for line_no, row in enumerate(body, start=2 if has_header else 1):
        if not row or row == [""]:
            continue
        try:
            values = {name: row[index[col]] for name, col in fields.items()}
            raw_label = row[index[label_col]] if label_col != -1 else row[-1]
        except IndexError:
            raise GlueDataError(
                f"{path}:{line_no}: expected at least {max(index.values()) + 1} tab-separated columns, got {len(row)}"
            ) from None
        out["label"].append(parse_label(raw_label, line_no))
        for name, value in values.items():
            out[name].append(value)
        out["idx"].append(len(out["idx"]))
    return out


def _column_index(path: Path, header: list[str] | None, columns: list[Any]) -> dict[Any, int]:
    if header is None:
        return {c: c for c in columns if isinstance(c, int)}
    index: dict[Any, int] = {-1: -1}
    for col in columns:
        if isinstance(col, int):
            continue
        if col not in header:
            raise GlueDataError(f"{path}: missing column {col!r}; header has {header}")
        index[col] = header.index(col)
    return index


def _label_parser(spec: TaskSpec, path: Path) -> Callable[[str, int], Any]:
    if spec.is_regression:

        def parse_float(raw: str, line: int) -> float:
            try:
                return float(raw)
            except ValueError:
                raise GlueDataError(f"{path}:{line}: unparsable similarity score {raw!r} (expected a number 0-5)") from None

        return parse_float

    names = {name: i for i, name in enumerate(spec.label_names)}

    def parse_class(raw: str, line: int) -> int:
        raw = raw.strip()
        if raw in names:
            return names[raw]
        if raw.isdigit() and int(raw) < len(spec.label_names):
            return int(raw)
        allowed = ", ".join([*spec.label_names, *map(str, range(len(spec.label_names)))])
        raise GlueDataError(f"{path}:{line}: unparsable label {raw!r} for {spec.name}; allowed: {allowed}")

    return parse_class


def count_rows(path: Path) -> int:
    """Data rows in a TSV (header excluded) without parsing it."""
    spec_has_header = path.parent.name != "CoLA"
    with path.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - (1 if spec_has_header else 0)
