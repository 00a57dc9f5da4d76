"""Shared builders for tests and benchmarks: small, valid objects that a test then bends.

A pytest plugin (tests/conftest.py loads it): the ``docs`` fixture hands out the builders.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest


def binding_doc(name: str = "app", namespace: str = "team", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "vault": {"address": "https://bao.example:8200", "role": name},
        "secrets": [
            {"path": f"{namespace}/{name}", "keys": [{"key": "password", "env": "PASSWORD"}]}
        ],
    }
    body.update(spec)
    return {
        "apiVersion": "cloudtaser.io/v1alpha1",
        "kind": "SecretBinding",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def policy_doc(name: str = "baseline", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "cloudtaser.io/v1alpha1",
        "kind": "EnforcementPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def pod_doc(
    name: str = "app-1",
    namespace: str = "team",
    labels: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    inject: bool = True,
    injected: bool = False,
) -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if inject:
        annotations["cloudtaser.io/inject"] = "true"
    if injected:
        annotations["cloudtaser.io/injected"] = "0000"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels if labels is not None else {"app": "app"},
            "annotations": annotations,
        },
        "spec": {
            "containers": copy.deepcopy(containers)
            if containers is not None
            else [{"name": "app", "image": "app:1", "command": ["/app"]}]
        },
    }
    if injected:  # what the webhook leaves: its marker and its init container
        pod["spec"]["initContainers"] = [{"name": "cloudtaser-init", "image": "bundle"}]
    return pod


def json_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON-like value (for tests that replace one field at a time)."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(json_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(json_paths(value, (*prefix, i)))
    return out


@pytest.fixture
def docs() -> Any:
    class Docs:
        binding = staticmethod(binding_doc)
        policy = staticmethod(policy_doc)
        pod = staticmethod(pod_doc)

    return Docs
