"""Frozen parameter dataclasses built from config mappings that reject unknown keys."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Self

from lrtl.cli import StageError


class ParamsError(StageError, ValueError):
    """A config section that does not match its dataclass: an unknown or a missing key."""


def _nested_params(hint: Any) -> type[Params] | None:
    """The Params class of a field typed `P` or `P | None`, else None."""
    candidates = typing.get_args(hint) if _nullable(hint) else (hint,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, Params):
            return candidate
    return None


def _nullable(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """"; did you mean `x`?" for the known key closest to a misspelt one (difflib), else ""."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def unknown_key_message(path: str, key: str, known: Iterable[str]) -> str:
    """One line for an unknown config key: its full dotted path and the closest valid key, or the valid keys."""
    known = sorted(known)
    hint = did_you_mean(key, known) or f"; valid keys here: {', '.join(known)}"
    return f"{'.'.join(p for p in (path, key) if p)}: unknown config key{hint}"


def schema_error_message(err: Any, prefix: str = "") -> str:
    """One line for a jsonschema ValidationError of the config: the full dotted key path and what is wrong
    (for an unknown key, the closest valid one) instead of jsonschema's dump of the schema and the config."""
    path = ".".join(str(part) for part in (*([prefix] if prefix else []), *err.absolute_path))
    if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
        known = err.schema.get("properties", {})
        unknown = [key for key in err.instance if key not in known]
        if unknown:
            return "; ".join(unknown_key_message(path, str(key), known) for key in unknown)
    message = err.message if len(err.message) <= 240 else err.message[:240] + " ..."
    return f"{path or 'config'}: {message}"


def require_active_backend(params: Any, section: str) -> None:
    """A section with `backend: X` must give X's keys; the inactive backends' sections may be null."""
    if getattr(params, params.backend, "") is None:
        raise ParamsError(f"{section}.{params.backend}: expected a mapping of keys, got null, but {section}.backend "
                          f"is {params.backend}; give its keys as config.yaml does")


@dataclasses.dataclass(frozen=True)
class Params:
    """Base for a stage's parameters: `XParams.from_mapping(config["x"])`.

    Every field is required (defaults live only in config.yaml); nested dataclass fields are built
    recursively; an unknown or missing key, or a section that is not a mapping (an empty YAML section is
    None), raises a ParamsError naming it (a StageError: the run stops with that one line).
    """

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], where: str | None = None) -> Self:
        where = where or cls.__name__
        if not isinstance(mapping, Mapping):
            empty = " (an empty YAML section reads as null)" if mapping is None else ""
            raise ParamsError(f"{where}: expected a mapping of keys, got {type(mapping).__name__}{empty}; give "
                              f"the section its keys, as config.yaml does")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - set(fields))
        if unknown:
            raise ParamsError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(fields)}")
        missing = sorted(name for name, f in fields.items() if name not in mapping
                         and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ParamsError(f"{where}: missing key(s) {missing}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in mapping.items():
            hint = _nested_params(hints[name])
            if hint is not None and not (value is None and _nullable(hints[name])):
                value = hint.from_mapping(value, f"{where}.{name}")
            elif isinstance(value, list):
                value = tuple(value)
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
