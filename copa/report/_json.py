"""Typed access to decoded JSON with one-line errors that name the report and the JSON path."""

from __future__ import annotations

from typing import Any, TypeVar

from copa.errors import ReportError

T = TypeVar("T")

_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number", bool: "true/false"}


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def field(obj: dict[str, Any], key: str, kind: type[T], source: str, where: str, *, required: bool = True,
          hint: str = "") -> T | None:
    """obj[key] checked to be of `kind`; None when absent or null and not required."""
    path = f"{where}.{key}" if where else key
    value = obj.get(key)
    if value is None:
        if required:
            raise ReportError(f"{source}: missing field {path}{hint}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ReportError(f"{source}: field {path} must be {_JSON_NAMES.get(kind, kind.__name__)}, "
                          f"not {json_type(value)}{hint}")
    return value
