"""Field checks of the resource models: each bad value is refused at its exact path."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtaser.engine.documents import RESOURCE_KINDS, parse_document
from cloudtaser.engine.kube import LabelSelector
from cloudtaser.engine.resources import SecretBinding, duration_seconds
from tests.harness.documents import binding_doc, policy_doc


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    model, found = parse_document(doc, RESOURCE_KINDS)
    assert (model is None) == bool(found)
    return found


def key(**fields: Any) -> dict[str, Any]:
    return {"key": "k", **fields}


def with_keys(*keys: dict[str, Any]) -> dict[str, Any]:
    return binding_doc(secrets=[{"path": "a/b", "keys": list(keys)}])


def test_valid_binding_parses_with_defaults() -> None:
    model, found = parse_document(binding_doc(), RESOURCE_KINDS)
    assert found == []
    assert isinstance(model, SecretBinding)
    assert model.spec.vault.auth_mount == "kubernetes"
    assert model.spec.secrets[0].mount == "secret"
    assert model.spec.vault.tls.client_certificate.source == "file"


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        (
            with_keys(key(env="OK"), key(env="lower-case")),
            "spec.secrets[0].keys[1].env",
            "'lower-case' is not a valid environment variable name",
        ),
        (with_keys(key(env="1ABC")), "spec.secrets[0].keys[0].env", "'1ABC' is not a valid"),
        (with_keys(key()), "spec.secrets[0].keys[0]", "key 'k' has no delivery"),
        (with_keys(key(file="relative/x")), "spec.secrets[0].keys[0].file", "clean absolute"),
        (with_keys(key(file="/etc/../x")), "spec.secrets[0].keys[0].file", "clean absolute"),
        (with_keys(key(file="/proc/self/x")), "spec.secrets[0].keys[0].file", "under /proc"),
        (with_keys(key(sdk="Bad Name")), "spec.secrets[0].keys[0].sdk", "not a valid SDK name"),
        (
            with_keys(key(env="A"), key(env="A")),
            "spec",
            "environment variable 'A' is delivered twice (spec.secrets[0].keys[0].env and "
            "spec.secrets[0].keys[1].env)",
        ),
        (
            binding_doc(vault={"address": "http://bao:8200", "role": "r"}),
            "spec.vault.address",
            "must be an https:// URL",
        ),
        (
            binding_doc(vault={"address": "https://u:p@bao:8200", "role": "r"}),
            "spec.vault.address",
            "must not carry credentials",
        ),
        (binding_doc(vault={"address": "https://bao"}), "spec.vault.role", "required field"),
        (binding_doc(refreshInterval="5s"), "spec.refreshInterval", "shorter than the minimum"),
        (binding_doc(refreshInterval="soon"), "spec.refreshInterval", "not a duration"),
        (binding_doc(secrets=[]), "spec.secrets", "at least 1 item"),
        (
            binding_doc(secrets=[{"path": "/abs", "keys": [key(env="A")]}]),
            "spec.secrets[0].path",
            "not a valid KV path",
        ),
        (binding_doc(color="blue"), "spec.color", "unknown field"),
        (
            binding_doc(selector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
            "spec.selector.matchExpressions[0]",
            "operator In needs at least one value",
        ),
        (
            binding_doc(selector={"matchLabels": {"bad key!": "x"}}),
            "spec.selector.matchLabels.bad key!",
            "not a valid label key",
        ),
        (
            binding_doc(
                vault={
                    "address": "https://bao",
                    "role": "r",
                    "tls": {"clientCertificate": {"source": "secret"}},
                }
            ),
            "spec.vault.tls.clientCertificate",
            "source 'secret' needs secretName",
        ),
        (
            binding_doc(
                vault={
                    "address": "https://bao",
                    "role": "r",
                    "tls": {"caFile": "/ca.pem", "caConfigMap": {"name": "ca"}},
                }
            ),
            "spec.vault.tls",
            "set caFile or caConfigMap, not both",
        ),
        (policy_doc(mode="block"), "spec.mode", "input should be 'enforce' or 'audit'"),
        (
            policy_doc(requireBackend="tracepoint"),
            "spec.requireBackend",
            "'tracepoint' is not a backend a policy can require (only 'lsm'): the tracepoint "
            "backend is the fallback",
        ),
        (policy_doc(requireBackend="LSM"), "spec.requireBackend", "'LSM' is not a backend"),
        (
            policy_doc(allowedAccessors=[{"executable": "gdb"}]),
            "spec.allowedAccessors[0].executable",
            "clean absolute",
        ),
        ({**policy_doc(), "metadata": {"name": "Bad_Name"}}, "metadata.name", "not a valid name"),
    ],
)
def test_bad_field_is_reported_at_its_path(doc: dict[str, Any], path: str, message: str) -> None:
    found = problems(doc)
    assert any(p == path and message in m for p, m in found), found


def test_kind_and_api_version_are_checked() -> None:
    assert problems({"kind": "Widget"})[0][1].startswith("unknown kind 'Widget'")
    assert problems({"apiVersion": "v1"}) == [("kind", "required field is missing")]
    wrong = {**binding_doc(), "apiVersion": "cloudtaser.io/v2"}
    assert problems(wrong) == [
        ("apiVersion", "'cloudtaser.io/v2' is not cloudtaser.io/v1alpha1 (kind SecretBinding)")
    ]
    assert problems([1, 2]) == [("(document)", "expected a mapping, got list")]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
        (
            {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]},
            {"a": "1"},
            False,
        ),
    ],
)
def test_label_selector_semantics(
    selector: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2h", 7200)]
)
def test_durations(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds
