"""Every YAML under policies/ and examples/ is valid and compiles without errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cloudtaser.cli import main

ROOT = Path(__file__).parent.parent
FILES = sorted(
    str(p.relative_to(ROOT)) for d in ("policies", "examples") for p in (ROOT / d).rglob("*.y*ml")
)


def test_there_are_examples() -> None:
    assert any(f.startswith("policies/baseline") for f in FILES)
    assert len([f for f in FILES if f.startswith("policies/")]) >= 3
    assert any(f.startswith("examples/") for f in FILES)


@pytest.mark.parametrize("path", FILES)
def test_validates(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["validate", path])
    assert result.exit_code == 0, result.output


def test_examples_compile_and_the_demo_pod_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["compile", "examples", "policies", "-o", "json"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main, ["compile", "examples", "policies", "--pod", "examples/pods/postgres-pod.yaml"]
    )
    assert result.exit_code == 0, result.output
    assert '"/spec/containers/0/command"' in result.stdout
