"""The README's security limitations are the threat model's residuals, word for word."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- residuals:begin -->\n(.*?)<!-- residuals:end -->", re.S)


def _residuals(path: Path) -> list[str]:
    found = BLOCK.findall(path.read_text())
    assert len(found) == 1, f"{path}: want one residuals block, found {len(found)}"
    return [line for line in found[0].splitlines() if line.strip()]


def test_readme_limitations_are_the_threat_models_residuals() -> None:
    threat_model = _residuals(REPO / "docs" / "THREAT-MODEL.md")
    assert threat_model and all(line.startswith("- ") for line in threat_model)
    assert _residuals(REPO / "README.md") == threat_model
