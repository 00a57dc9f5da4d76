"""Golden cases: tests/golden/<case>/input/*.yaml -> expected/plan.json and patches.json.

The input goes through the real CLI (`cloudtaser compile DIR -o json`), so loading, parsing
and problem reporting are covered too; patches.json holds, for each pod of the input that a
binding selects, the patch the webhook would apply. Regenerate after an intended change with
`UPDATE_GOLDEN=1 scripts/test tests/test_golden.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloudtaser.cli import _state, main
from cloudtaser.engine.compiler import IncrementalCompiler
from cloudtaser.engine.patches import pod_patch

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input").is_dir())
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _patches(input_dir: Path) -> str:
    state, _ = _state([str(input_dir)])
    compiler = IncrementalCompiler(state)
    out = {}
    for pod in sorted(state.pods, key=lambda p: (p.metadata.namespace or "", p.metadata.name)):
        plan = compiler.plan_pod(pod)
        if plan is not None:
            result = pod_patch(pod, plan, state.settings)
            out[f"{plan.namespace}/{plan.name}"] = result.model_dump(mode="json", exclude_none=True)
    return json.dumps(out, indent=2, sort_keys=True) + "\n"


def _check(path: Path, actual: str) -> None:
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert actual == path.read_text(), f"{path} differs (UPDATE_GOLDEN=1 to accept)"


def test_at_least_twelve_cases() -> None:
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    root = GOLDEN / case
    result = CliRunner().invoke(main, ["compile", str(root / "input"), "-o", "json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    plan = json.loads(result.stdout)
    has_errors = any(p["severity"] == "error" for p in plan["problems"])
    assert result.exit_code == (1 if has_errors else 0)
    _check(root / "expected" / "plan.json", result.stdout)
    _check(root / "expected" / "patches.json", _patches(root / "input"))
