"""Pydantic validation errors as (field path, message) pairs in the wire's camelCase.

Its own module so the wrapper, which reports a bad config before every app start, can use it
without importing the resource models.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('spec', 'secrets', 0, 'keys', 1, 'env')`` -> ``spec.secrets[0].keys[1].env``."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for "the dict key itself", named just before
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(document)"


def _message(error: Any) -> str:
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return message[0].lower() + message[1:] if message[:1].isupper() else message


def validation_problems(error: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) for each error, in document order, without duplicates."""
    seen: dict[tuple[str, str], None] = {}
    for e in error.errors(include_url=False, include_input=False):
        seen.setdefault((field_path(tuple(e["loc"])), _message(e)), None)
    return list(seen)
