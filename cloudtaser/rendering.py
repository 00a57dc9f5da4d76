"""Output for people and machines: kubectl-style tables, JSON and YAML (and TOML for the
local node's containerd)."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

FORMATS = ("table", "json", "yaml")


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], wrap: Mapping[str, int] | None = None
) -> str:
    """Columns padded to their widest cell, upper-case headers, like ``kubectl get``.

    ``wrap`` maps a header to a width: that column's cells are wrapped at word boundaries
    onto continuation lines, so one long cell does not widen every row.
    """
    widths_of = {headers.index(h): w for h, w in (wrap or {}).items()}
    cells = [[[str(h).upper()] for h in headers]]
    for row in rows:
        cells.append(
            [
                textwrap.wrap(str(c), widths_of[i], break_on_hyphens=False) or [""]
                if i in widths_of
                else [str(c)]
                for i, c in enumerate(row)
            ]
        )
    widths = [max(len(line) for r in cells for line in r[i]) for i in range(len(headers))]
    lines = []
    for row in cells:
        for n in range(max(len(c) for c in row)):
            parts = [c[n] if n < len(c) else "" for c in row]
            lines.append(
                "   ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True)).rstrip()
            )
    return "\n".join(lines) + "\n"


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    raise ValueError(f"unknown output format {fmt!r}")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml(data: Mapping[str, Any]) -> str:
    """A TOML document from nested mappings of str, int, bool and lists of those (what the
    node's containerd config needs; Python reads TOML but writes none). Sub-tables follow
    the scalars of their parent, so the output reads like a hand-written config."""
    lines: list[str] = []

    def key(k: str) -> str:
        return k if _BARE_KEY.fullmatch(k) else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a TOML basic string
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML for {type(v).__name__}")

    def emit(path: list[str], table: Mapping[str, Any]) -> None:
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        if path and (scalars or not tables):
            lines.append(f"\n[{'.'.join(key(p) for p in path)}]")
        lines.extend(f"{key(k)} = {value(v)}" for k, v in scalars)
        for k, v in tables:
            emit([*path, k], v)

    emit([], data)
    return "\n".join(lines).lstrip("\n") + "\n"
