"""Committed study tables are exactly what `kdray report` prints for the committed Parquet files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kdray.report import render

RESULTS = Path(__file__).resolve().parents[1] / "results"
STUDIES = sorted(p.parent for p in RESULTS.glob("*/trials.parquet"))


def test_there_is_a_committed_study() -> None:
    assert STUDIES, "no results/*/trials.parquet"


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_readme_table_equals_report(study: Path) -> None:
    text = (study / "README.md").read_text()
    blocks = re.findall(r"<!-- kdray report (\S+)(.*?) -->\n(.*?)\n<!-- end of report -->", text, re.S)
    assert blocks, f"{study}/README.md has no report block"
    for target, args, table in blocks:
        by = re.search(r"--by (\S+)", args)
        paired = re.search(r"--paired (\S+)", args)
        against = re.search(r"--against (\S+)", args)
        avg_exclude = re.search(r"--avg-exclude (\S+)", args)
        named = (RESULTS.parent / target).resolve()
        # a block names the study or a folder inside it (e.g. its ablation sweep)
        assert named == study.resolve() or study.resolve() in named.parents, f"the block names {target}, not {study}"
        # a DIR:METHOD reference names its folder from the repository root, as the block's command does
        refs = ",".join(str(RESULTS.parent / r) if ":" in r else r for r in paired.group(1).split(",")) if paired else None
        assert table.strip() == render(named, by=by.group(1) if by else "method", paired=refs,
                                       against=RESULTS.parent / against.group(1) if against else None,
                                       avg_exclude=avg_exclude.group(1) if avg_exclude else None).strip()
