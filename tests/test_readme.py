"""The README's Quick start is what CI runs, and its documented commands exist."""

from __future__ import annotations

import re

from conftest import REPO

from kdray.cli import build_parser


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README Quick start has no bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_has_install_test_and_main_job() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 3
    assert commands[0] == "./install.sh"
    assert "pytest" in commands[1]
    assert "kdray sweep" in commands[2]


def test_ci_runs_the_quick_start_verbatim() -> None:
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    install, tests, _ = _quick_start_commands()
    assert install in ci_lines
    assert tests in ci_lines


def test_every_documented_subcommand_exists() -> None:
    text = (REPO / "README.md").read_text()
    documented = set(re.findall(r"`kdray ([\w-]+)", text))
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"sweep", "train", "teacher", "report", "tasks", "bench"} <= documented
    assert documented <= set(subparsers.choices), documented - set(subparsers.choices)


def test_readme_example_yaml_is_the_shipped_glue_space() -> None:
    text = (REPO / "README.md").read_text()
    section = text.split("## Sweeps", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block and block.group(1) == (REPO / "search_spaces" / "glue.yaml").read_text()
