"""Hypothesis strategies for cluster objects, shared by the property tests (tests/fuzz, the
engine's ledger tests): valid documents from tests/harness/documents.py with up to three fields
replaced by arbitrary JSON, so a drawn document may or may not parse."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.harness.documents import binding_doc, json_paths, pod_doc, policy_doc

NAMES = st.sampled_from(["a", "b", "app", "db", "x-1"])
LABELS = st.dictionaries(st.sampled_from(["app", "tier", "team"]), NAMES, max_size=2)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6) | NAMES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A valid document with up to three fields replaced by arbitrary JSON."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(0, 3))):
        paths = json_paths(doc)[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        node = doc
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = draw(JSONISH)
    return doc


@st.composite
def binding(draw: st.DrawFn) -> dict[str, Any]:
    name, ns = draw(NAMES), draw(st.sampled_from(["team", "shop", "kube-system"]))
    keys = [
        {"key": "k", draw(st.sampled_from(["env", "file", "sdk"])): v}
        for v in draw(
            st.lists(st.sampled_from(["A", "B", "/etc/a", "s-1"]), min_size=1, max_size=3)
        )
    ]
    base = binding_doc(
        name, ns, selector={"matchLabels": draw(LABELS)}, secrets=[{"path": "p/q", "keys": keys}]
    )
    return draw(mutated(base))


@st.composite
def policy(draw: st.DrawFn) -> dict[str, Any]:
    base = policy_doc(
        draw(NAMES),
        mode=draw(st.sampled_from(["enforce", "audit"])),
        podSelector={"matchLabels": draw(LABELS)},
        killOnViolation=draw(st.booleans()),
    )
    return draw(mutated(base))


@st.composite
def pod(draw: st.DrawFn) -> dict[str, Any]:
    base = pod_doc(
        draw(NAMES),
        draw(st.sampled_from(["team", "shop"])),
        labels=draw(LABELS),
        injected=draw(st.booleans()),
    )
    return draw(mutated(base))
