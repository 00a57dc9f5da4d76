"""The committed CRDs are exactly what the models generate, and they are structural."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cloudtaser.cli import render_crd
from cloudtaser.engine.crds import custom_resource_definitions

ROOT = Path(__file__).parent.parent
GENERATED = custom_resource_definitions()


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_committed_crd_matches_generation(name: str) -> None:
    committed = ROOT / "crds" / name
    assert committed.exists(), f"{committed} missing: run `cloudtaser crds --write crds/`"
    assert committed.read_text() == render_crd(GENERATED[name]), (
        f"{committed} drifted from engine/cloudtaser/engine/resources.py: run `cloudtaser crds --write crds/`"
    )


def test_no_stray_files_in_crds_dir() -> None:
    assert sorted(p.name for p in (ROOT / "crds").iterdir()) == sorted(GENERATED)


def _schemas(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node (root, properties, items, additionalProperties) with its path."""
    out = [(path, node)]
    for field, sub in node.get("properties", {}).items():
        out.extend(_schemas(sub, f"{path}.{field}"))
    if isinstance(node.get("items"), dict):
        out.extend(_schemas(node["items"], f"{path}[]"))
    if isinstance(node.get("additionalProperties"), dict):
        out.extend(_schemas(node["additionalProperties"], f"{path}{{}}"))
    return out


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = GENERATED[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_schema_is_structural_and_described(name: str) -> None:
    schema = _schema(name)
    text = json.dumps(schema)
    for forbidden in ('"$ref"', '"anyOf"', '"oneOf"', '"allOf"', '"const"', '"title"', '"$defs"'):
        assert forbidden not in text
    nodes = _schemas(schema)
    assert len(nodes) > 20
    for path, node in nodes:
        assert "type" in node, f"{name}: {path or '(root)'} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
    # Every field of spec and status carries a description for `kubectl explain`.
    for path, node in nodes:
        if path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{name}: {path} has no description"


def test_printer_columns() -> None:
    sb = GENERATED["secretbindings.cloudtaser.io.yaml"]["spec"]
    ep = GENERATED["enforcementpolicies.cloudtaser.io.yaml"]["spec"]
    columns = [
        c["name"].upper()
        for c in sb["versions"][0]["additionalPrinterColumns"]
        if not c.get("priority")
    ]
    assert columns == ["READY", "PODS", "DELIVERED", "SECRETS", "AGE", "MESSAGE"]
    assert [c["name"].upper() for c in ep["versions"][0]["additionalPrinterColumns"]] == [
        "MODE",
        "NODES",
        "VIOLATIONS",
        "AGE",
    ]
    assert sb["names"]["shortNames"] == ["sb"] and ep["names"]["shortNames"] == ["ep", "ctep"]
    assert sb["scope"] == "Namespaced" and ep["scope"] == "Cluster"
    assert sb["names"]["categories"] == ep["names"]["categories"] == ["cloudtaser"]
    assert sb["versions"][0]["subresources"] == {"status": {}}


def _examples() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")) + sorted(
        (ROOT / "policies").glob("*.yaml")
    ):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_examples_pass_the_crd_schema_the_api_server_uses() -> None:
    by_kind = {GENERATED[n]["spec"]["names"]["kind"]: _schema(n) for n in GENERATED}
    checked = 0
    for doc in _examples():
        if doc["kind"] in by_kind:
            jsonschema.validate(doc, by_kind[doc["kind"]])
            checked += 1
    assert checked >= 4


def test_crd_schema_refuses_what_the_api_server_would() -> None:
    schema = _schema("secretbindings.cloudtaser.io.yaml")
    doc = next(d for d in _examples() if d["kind"] == "SecretBinding")
    doc["spec"]["secrets"][0]["keys"][0]["env"] = "lower-case"
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.validate(doc, schema)
