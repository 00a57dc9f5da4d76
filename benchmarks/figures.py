"""How every benchmark prints its figures: the human table (figure, target, measured, ratio) or,
with --json, one JSON object per run that benchmarks/report collects:

    {"benchmark": "webhook", "rows": [{"figure": ..., "target": ..., "measured": ...,
     "ratio": ...}], "notes": [...], "failed": false}

All cells are the strings the table shows; "failed" is true when the benchmark could not
produce its figures or a hard requirement (e.g. 0 failures) was missed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from cloudtaser.rendering import table

HEADERS = ("figure", "target", "measured", "ratio")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (for benchmarks/report) instead of the table",
    )


def as_json(
    name: str, rows: Sequence[Sequence[object]], notes: Sequence[str] = (), failed: bool = False
) -> str:
    return json.dumps(
        {
            "benchmark": name,
            "rows": [dict(zip(HEADERS, (str(c) for c in row), strict=True)) for row in rows],
            "notes": list(notes),
            "failed": failed,
        }
    )


def emit(
    name: str,
    rows: Sequence[Sequence[object]],
    json_mode: bool,
    notes: Sequence[str] = (),
    failed: bool = False,
    headers: Sequence[str] = HEADERS,
) -> None:
    """The table (notes after it), or the JSON object."""
    if json_mode:
        print(as_json(name, rows, notes, failed))
        return
    print(table(headers, rows), end="")
    for note in notes:
        print(note)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]
