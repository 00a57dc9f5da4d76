"""Turn parsed documents (plain dicts) into models, or into problems with field paths.

The I/O around it (reading files, YAML) lives in the CLI; this module only sees Python values,
so the operator, the webhook and ``cloudtaser validate`` report the same problem the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from cloudtaser.engine.fields import validation_problems
from cloudtaser.engine.kube import DEFAULT_NAMESPACE, Namespace, Pod
from cloudtaser.engine.plans import Problem
from cloudtaser.engine.resources import API_VERSION, EnforcementPolicy, SecretBinding

RESOURCE_KINDS: dict[str, type[BaseModel]] = {
    "SecretBinding": SecretBinding,
    "EnforcementPolicy": EnforcementPolicy,
}
CORE_KINDS: dict[str, type[BaseModel]] = {"Pod": Pod, "Namespace": Namespace}


def _identity(doc: dict[str, Any]) -> tuple[str | None, str]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        return None, "(unnamed)"
    name = meta.get("name")
    namespace = meta.get("namespace")
    return (
        namespace if isinstance(namespace, str) else None,
        name if isinstance(name, str) and name else "(unnamed)",
    )


def parse_document(
    doc: object, kinds: dict[str, type[BaseModel]]
) -> tuple[BaseModel | None, list[tuple[str, str]]]:
    """Parse one document as one of ``kinds``: (model, []) or (None, [(path, message)])."""
    if not isinstance(doc, dict):
        return None, [("(document)", f"expected a mapping, got {type(doc).__name__}")]
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        return None, [("kind", "required field is missing")]
    model = kinds.get(kind)
    if model is None:
        known = ", ".join(sorted(kinds))
        return None, [("kind", f"unknown kind '{kind}' (expected one of: {known})")]
    api_version = doc.get("apiVersion")
    expected = API_VERSION if kind in RESOURCE_KINDS else "v1"
    if api_version != expected:
        return None, [("apiVersion", f"'{api_version}' is not {expected} (kind {kind})")]
    try:
        return model.model_validate(doc), []
    except ValidationError as e:
        return None, validation_problems(e)


def as_problems(doc: object, found: list[tuple[str, str]]) -> list[Problem]:
    """Attach object identity to (path, message) pairs, for a Plan's problem list."""
    kind, namespace, name = "(unknown)", None, "(unnamed)"
    if isinstance(doc, dict):
        raw_kind = doc.get("kind")
        kind = raw_kind if isinstance(raw_kind, str) and raw_kind else "(unknown)"
        namespace, name = _identity(doc)
    if kind == "SecretBinding":
        namespace = namespace or DEFAULT_NAMESPACE
    return [
        Problem(kind=kind, namespace=namespace, name=name, path=path, message=message)
        for path, message in found
    ]


@dataclass
class ParsedObjects:
    """Cluster objects by kind, parsed; the ones that failed are problems instead."""

    bindings: list[SecretBinding] = field(default_factory=list)
    policies: list[EnforcementPolicy] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    namespaces: list[Namespace] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def parse_objects(objects: Mapping[str, Iterable[Mapping[str, Any]]]) -> ParsedObjects:
    """Objects as the API server lists them (by kind; list items may lack apiVersion/kind)."""
    out = ParsedObjects()
    targets: dict[str, list[Any]] = {
        "SecretBinding": out.bindings,
        "EnforcementPolicy": out.policies,
        "Pod": out.pods,
        "Namespace": out.namespaces,
    }
    for kind, bodies in objects.items():
        kinds = RESOURCE_KINDS if kind in RESOURCE_KINDS else CORE_KINDS
        api_version = API_VERSION if kind in RESOURCE_KINDS else "v1"
        for body in bodies:
            doc = {**body, "apiVersion": api_version, "kind": kind}
            model, found = parse_document(doc, kinds)
            if model is None:
                out.problems.extend(as_problems(doc, found))
            else:
                targets[kind].append(model)
    return out
