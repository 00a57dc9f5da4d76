"""The wrapper contract's config part from the engine's side: the committed schema is what the
model generates, and the engine's reader agrees with every vector (the Go wrapper runs the same
vectors: wrapper/internal/config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from cloudtaser.cli import render_contract
from cloudtaser.engine.contracts import CONTRACT_FILE, with_config_schema
from cloudtaser.engine.fields import validation_problems
from cloudtaser.engine.plans import parse_wrapper_config

REPO = Path(__file__).resolve().parents[3]
CONTRACT = json.loads((REPO / CONTRACT_FILE).read_text())
VECTORS = CONTRACT["config"]["vectors"]


def test_the_committed_schema_is_the_generated_one() -> None:
    """Regenerate with `cloudtaser contract --write`."""
    assert (REPO / CONTRACT_FILE).read_text() == render_contract(with_config_schema(CONTRACT))


def _raw(vector: dict[str, Any]) -> str:
    return vector["text"] if "text" in vector else json.dumps(vector["config"])


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_config_vector(vector: dict[str, Any]) -> None:
    try:
        parse_wrapper_config(_raw(vector))
    except ValidationError as e:
        path, message = validation_problems(e)[0]
        assert not vector["valid"], f"refused: {path}: {message}"
        assert path == vector["error_path"]
        assert message == vector.get("error_message", message)
        return
    assert vector["valid"], f"accepted, want {vector['error_path']}"


@pytest.mark.parametrize(
    "vector",
    [v for v in VECTORS if "config" in v],
    ids=[v["name"] for v in VECTORS if "config" in v],
)
def test_the_schema_agrees_with_the_vector(vector: dict[str, Any]) -> None:
    """The schema alone (any JSON Schema validator) says the same valid/invalid."""
    validator = jsonschema.Draft202012Validator(CONTRACT["config"]["schema"])
    assert validator.is_valid(vector["config"]) == vector["valid"]


def test_there_are_vectors_of_both_kinds() -> None:
    assert sum(v["valid"] for v in VECTORS) >= 5 and sum(not v["valid"] for v in VECTORS) >= 30
