"""CustomResourceDefinitions generated from the resource models.

Pydantic's JSON schema is turned into a Kubernetes *structural* schema: every ``$ref`` inlined,
``Optional[X]`` (anyOf with null) collapsed to X, ``const`` to a one-value enum, titles and null
defaults dropped, ``metadata`` left to the API server. The result is a plain dict; the CLI dumps
it as YAML into ``crds/`` and a test fails when the committed files differ.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cloudtaser.engine.resources import (
    GROUP,
    VERSION,
    EnforcementPolicy,
    SecretBinding,
)

Schema = dict[str, Any]
_DROP = {"title", "discriminator"}


def _inline(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        extra = {k: _inline(v, defs) for k, v in node.items() if k != "$ref"}
        return {**target, **extra}
    return {k: _inline(v, defs) for k, v in node.items()}


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in _DROP}
    any_of = node.get("anyOf")
    if isinstance(any_of, list):
        rest = [s for s in any_of if s.get("type") != "null"]
        if len(rest) == 1:
            merged = {k: v for k, v in node.items() if k != "anyOf"}
            return _structural({**rest[0], **merged})
    if node.get("additionalProperties") is False:
        # extra="forbid" in pydantic; a structural schema prunes unknown fields instead.
        del node["additionalProperties"]
    if "default" in node and node["default"] is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: Schema = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(s) for name, s in value.items()}
        else:
            out[key] = _structural(value)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The structural openAPIV3Schema of a resource model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: Schema = _structural(_inline(raw, defs))
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {
        "type": "string",
        "description": "APIVersion of the object: cloudtaser.io/v1alpha1.",
    }
    schema["properties"]["kind"] = {"type": "string", "description": "Kind of the object."}
    schema["required"] = sorted(set(schema.get("required", [])) - {"apiVersion", "kind"})
    return schema


def _crd(
    model: type[BaseModel],
    plural: str,
    scope: str,
    short_names: list[str],
    columns: list[Schema],
) -> Schema:
    kind = model.__name__
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["cloudtaser"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": openapi_schema(model)},
                }
            ],
        },
    }


def _age() -> Schema:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def custom_resource_definitions() -> dict[str, Schema]:
    """File name -> CRD, for every cloudtaser resource."""
    return {
        "secretbindings.cloudtaser.io.yaml": _crd(
            SecretBinding,
            "secretbindings",
            "Namespaced",
            ["sb"],
            [
                {
                    "name": "Ready",
                    "type": "string",
                    "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                },
                {
                    "name": "Pods",
                    "type": "integer",
                    "description": "Pods the binding selects.",
                    "jsonPath": ".status.matchedPods",
                },
                {
                    "name": "Injected",
                    "type": "integer",
                    "priority": 1,
                    "description": "Selected pods running the wrapper.",
                    "jsonPath": ".status.injectedPods",
                },
                {
                    "name": "Delivered",
                    "type": "integer",
                    "description": "Injected pods whose wrapper fetched every secret.",
                    "jsonPath": ".status.deliveredPods",
                },
                {
                    "name": "Failing",
                    "type": "integer",
                    "priority": 1,
                    "description": "Injected pods whose wrapper failed.",
                    "jsonPath": ".status.failingPods",
                },
                {
                    "name": "Secrets",
                    "type": "integer",
                    "description": "Keys delivered to each pod.",
                    "jsonPath": ".status.secrets",
                },
                _age(),
                {
                    "name": "Message",
                    "type": "string",
                    "description": "Why the binding is (not) ready, e.g. a wrapper's reason.",
                    "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
                },
            ],
        ),
        "enforcementpolicies.cloudtaser.io.yaml": _crd(
            EnforcementPolicy,
            "enforcementpolicies",
            "Cluster",
            # "ep" is the design's short name, but kubectl resolves it to core Endpoints
            # first; "ctep" always reaches EnforcementPolicies.
            ["ep", "ctep"],
            [
                {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                {
                    "name": "Nodes",
                    "type": "integer",
                    "description": "Nodes enforcing the policy.",
                    "jsonPath": ".status.nodesEnforcing",
                },
                {
                    "name": "Violations",
                    "type": "integer",
                    "jsonPath": ".status.violations",
                },
                _age(),
            ],
        ),
    }
