"""YAML as kdray reads it: ``yaml.SafeLoader`` that also refuses a key given twice in one mapping.

PyYAML keeps the last of two equal keys silently, so ``train:`` written twice in a space file would drop the
first section without a word. :class:`UniqueKeyLoader` is the safe loader (no ``!!python`` tags, nothing
executed) plus that one check, and its errors name both lines. It imports only the leaf kdray.config_paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

from kdray.config_paths import ConfigError


class DuplicateKeyError(ConstructorError):
    """A mapping that names one key twice; the message gives both lines (1-based)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping (merge keys ``<<`` keep their meaning)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                    seen.setdefault(key, line)
                except TypeError:  # an unhashable key: SafeLoader reports it as it always has
                    continue
                if first is not None:
                    raise DuplicateKeyError(
                        None, None, f"duplicate key {key!r} on lines {first} and {line} (YAML would keep only "
                        "the second)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """Parse ``text`` with :class:`UniqueKeyLoader`; raises ``yaml.YAMLError`` (a duplicate key included)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - UniqueKeyLoader is a SafeLoader


def describe_error(err: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (PyYAML's own message spans several lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    if isinstance(err, DuplicateKeyError):
        where = ""  # the message names both lines
    if "could not determine a constructor for the tag" in problem:
        problem = (f"tag {problem.split('tag', 1)[1].strip()} is not allowed: kdray reads plain YAML only "
                   "(safe_load, no Python objects)")
    return f"{problem}{where}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file safely (a key given twice is an error); errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {describe_error(err)}") from None
    if raw is None:
        raise ConfigError(f"{path}: file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    return raw
