"""Output for people and machines: kubectl-style tables, JSON and YAML."""

from __future__ import annotations

import json
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
        cells.append([
            textwrap.wrap(str(c), widths_of[i], break_on_hyphens=False) or [""]
            if i in widths_of else [str(c)]
            for i, c in enumerate(row)
        ])
    widths = [max(len(line) for r in cells for line in r[i]) for i in range(len(headers))]
    lines = []
    for row in cells:
        for n in range(max(len(c) for c in row)):
            parts = [c[n] if n < len(c) else "" for c in row]
            lines.append("   ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    raise ValueError(f"unknown output format {fmt!r}")
