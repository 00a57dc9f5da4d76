"""The long fuzz run: the properties of tests/fuzz with 10,000 examples each.

Run: .venv/bin/python benchmarks/fuzz.py [--examples 10000]
(.ci/run runs the same properties with 150 examples each.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.figures import add_json_flag, emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    add_json_flag(parser)
    args = parser.parse_args()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz"],
        cwd=REPO,
        env={**os.environ, "CLOUDTASER_FUZZ_EXAMPLES": str(args.examples)},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - start
    verdict = "pass" if proc.returncode == 0 else "FAIL"
    rows = [
        (
            "engine: random bindings/policies/pods, compile never raises, deterministic",
            f">= {args.examples} cases",
            verdict,
            f"{seconds:.0f} s total",
        ),
        (
            "webhook: random/truncated AdmissionReviews, 200 or 400, never raises",
            f">= {args.examples} cases",
            verdict,
            "-",
        ),
    ]
    notes = [proc.stdout[-4000:]] if proc.returncode != 0 else []
    emit(
        "fuzz",
        rows,
        args.json,
        notes,
        failed=proc.returncode != 0,
        headers=["figure", "target", "measured", "time"],
    )
    if proc.returncode != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
