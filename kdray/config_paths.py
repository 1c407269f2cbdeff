"""Dotted key paths over the config models: one walker behind overrides, flattening and error messages.

``train.lr``, ``selector.reward.cost`` and pydantic's error locations all name a field by the path from a
root model (:class:`~kdray.config.RunConfig` or ``SweepConfig``). :func:`field_at` follows such a path one
field at a time; everything else here (``--set``/searched overrides, their flattening into Parquet column
names, the "allowed keys" of an error) is that walk plus what to do at its end. A leaf module: the models
pass themselves in as the root, so it imports no kdray module.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

NO_SUB_KEYS = "(a plain value has no sub-keys)"
# No count, size, step or seed anyone means is beyond 2**53 (floats hold integers exactly up to it, and
# trials.parquet stores int64); a 400-digit max_steps is a typo that would otherwise start a whole sweep.
MAX_INT = 2**53


class ConfigError(ValueError):
    """A bad configuration value; the message names the file, key path and allowed values."""


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated too, floats must be finite
    (``.inf``/``.nan`` are refused) and integers within ±:data:`MAX_INT`, in lists and mappings too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _sane_integers(cls, value: Any) -> Any:
        _check_integers(value)
        return value


def _check_integers(value: Any) -> None:
    """ValueError for an integer beyond ±MAX_INT anywhere in ``value`` (without printing all its digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ValueError(f"integer of {len(str(abs(value)))} digits is out of range; at most 2**53 "
                         f"({MAX_INT}) in absolute value")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_integers(item)
    elif isinstance(value, dict):
        for item in value.values():
            _check_integers(item)


class UnknownKey(KeyError):
    """A path part that names no field; ``allowed`` are the field names at that point (empty under a value)."""

    def __init__(self, depth: int, allowed: list[str]) -> None:
        super().__init__(depth)
        self.depth, self.allowed = depth, allowed


def is_section(annotation: Any) -> bool:
    """Whether ``annotation`` is a config model (a section whose keys can be walked into)."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _child(annotation: Any, part: str, depth: int) -> Any:
    """The annotation one step below ``annotation``: a model's field, or any key of a ``dict[str, Model]``."""
    if is_section(annotation):
        fields = annotation.model_fields
        if part not in fields:
            raise UnknownKey(depth, list(fields))
        return fields[part].annotation
    args = getattr(annotation, "__args__", ())
    if getattr(annotation, "__origin__", None) is dict and len(args) == 2 and is_section(args[1]):
        return args[1]  # search.space.<any dotted key> -> Distribution
    raise UnknownKey(depth, [])


def field_at(root: type[BaseModel], parts: Sequence[Any]) -> Any:
    """The annotation that ``parts`` lead to from ``root``; :class:`UnknownKey` at the first part that is no field."""
    annotation: Any = root
    for depth, part in enumerate(parts):
        annotation = _child(annotation, str(part), depth)
    return annotation


def allowed_keys(root: type[BaseModel], parent: Sequence[Any]) -> list[str]:
    """Field names of the section at ``parent`` (empty when ``parent`` is not a section)."""
    try:
        annotation = field_at(root, parent)
    except UnknownKey:
        return []
    return list(annotation.model_fields) if is_section(annotation) else []


def format_errors(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    """One line per pydantic error: ``source: key.path: message``, unknown keys with the allowed ones."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            allowed = allowed_keys(root, e["loc"][:-1])
            if allowed:
                msg += f"; allowed keys: {', '.join(allowed)}"
        # a whole-model check (several sections at once) names its keys in its own message
        lines.append(f"{source}: {path}: {msg}" if path else f"{source}: {msg}")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], root: type[BaseModel],
                    source: str = "<overrides>") -> dict[str, Any]:
    """A copy of ``raw`` with ``{"a.b.c": value}`` overrides set; paths that name no field of ``root`` are errors.

    A mapping over a section sets its keys one by one: ``selector={name: actor_critic, action: hard}`` changes
    those two and keeps the section's other settings.
    """
    return _apply(copy.deepcopy(raw), root, overrides, source, top=True)


def _apply(out: dict[str, Any], section: Any, overrides: dict[str, Any], source: str, top: bool) -> dict[str, Any]:
    """Set ``overrides`` into ``out`` (a dump of ``section``); ``top``: keys are dotted paths, else field names."""
    for key, value in overrides.items():
        parts = key.split(".") if top else [key]
        node, annotation = out, section
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            try:
                annotation = _child(annotation, part, depth)
            except UnknownKey as unknown:
                lead = f"{source}: {key}" if top else source
                allowed = ", ".join(unknown.allowed) or NO_SUB_KEYS
                raise ConfigError(f"{lead}: unknown key '{where}'; allowed keys: {allowed}") from None
            if depth < len(parts) - 1:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{source}: {key}: '{where}' is not a mapping")
        if isinstance(value, dict) and is_section(annotation):
            inner = f"{source}: {key}" if top else f"{source}.{key}"
            node[parts[-1]] = _apply(copy.deepcopy(node.get(parts[-1]) or {}), annotation, value, inner, top=False)
        else:
            node[parts[-1]] = copy.deepcopy(value)
    return out


def flatten_overrides(overrides: dict[str, Any], root: type[BaseModel]) -> dict[str, Any]:
    """Mapping values over a section become dotted keys: ``{"selector": {"name": "pkd"}}`` -> ``{"selector.name":
    "pkd"}``, so each searched setting lands in its own trials.parquet column however the space file grouped it.
    Mappings that are values themselves (``selector.weights``) stay whole."""
    out: dict[str, Any] = {}
    for dotted, value in overrides.items():
        try:
            annotation = field_at(root, dotted.split("."))
        except UnknownKey:
            annotation = None
        if isinstance(value, dict) and value and is_section(annotation):
            out.update(flatten_overrides({f"{dotted}.{k}": v for k, v in value.items()}, root))
        else:
            out[dotted] = value
    return out


def check_names(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    """Raise ValueError naming the unknown values of a name family and the allowed ones."""
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; allowed: {', '.join(allowed)}")
    return values
