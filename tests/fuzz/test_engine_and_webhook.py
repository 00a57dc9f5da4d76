"""Property tests: whatever objects and AdmissionReviews arrive, the engine reports problems and
the webhook answers 200 or 400 — nothing raises, nothing answers 500, and a compile is
deterministic. Short here (CI); `benchmarks/fuzz.py` runs the same properties with 10,000
examples each (CLOUDTASER_FUZZ_EXAMPLES)."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler, compile_state
from cloudtaser.engine.documents import parse_objects
from cloudtaser.engine.plans import InjectorSettings
from cloudtaser.engine.resources import SecretBinding
from cloudtaser.injector.admitting import admit
from tests.conftest import binding_doc, json_paths, pod_doc, policy_doc

EXAMPLES = int(os.environ.get("CLOUDTASER_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAMES = st.sampled_from(["a", "b", "app", "db", "x-1"])
LABELS = st.dictionaries(st.sampled_from(["app", "tier", "team"]), NAMES, max_size=2)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6) | NAMES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
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
    keys = [{"key": "k", draw(st.sampled_from(["env", "file", "sdk"])): v}
            for v in draw(st.lists(st.sampled_from(["A", "B", "/etc/a", "s-1"]), min_size=1, max_size=3))]
    base = binding_doc(name, ns, selector={"matchLabels": draw(LABELS)},
                       secrets=[{"path": "p/q", "keys": keys}])
    return draw(mutated(base))


@st.composite
def policy(draw: st.DrawFn) -> dict[str, Any]:
    base = policy_doc(draw(NAMES), mode=draw(st.sampled_from(["enforce", "audit"])),
                      podSelector={"matchLabels": draw(LABELS)},
                      killOnViolation=draw(st.booleans()))
    return draw(mutated(base))


@st.composite
def pod(draw: st.DrawFn) -> dict[str, Any]:
    base = pod_doc(draw(NAMES), draw(st.sampled_from(["team", "shop"])), labels=draw(LABELS),
                   injected=draw(st.booleans()))
    return draw(mutated(base))


def _objects(bindings: list[dict[str, Any]], policies: list[dict[str, Any]],
             pods: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {"SecretBinding": bindings, "EnforcementPolicy": policies, "Pod": pods, "Namespace": []}


@FUZZ
@given(st.lists(binding(), max_size=4), st.lists(policy(), max_size=3), st.lists(pod(), max_size=4))
def test_compile_never_raises_and_is_deterministic(
        bindings: list[dict[str, Any]], policies: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
    parsed = parse_objects(_objects(bindings, policies, pods))
    state = ClusterState(bindings=parsed.bindings, policies=parsed.policies, pods=parsed.pods,
                         problems=parsed.problems)
    first = compile_state(state).to_json()
    again = parse_objects(_objects(list(reversed(bindings)), list(reversed(policies)), list(reversed(pods))))
    assert compile_state(ClusterState(bindings=again.bindings, policies=again.policies,
                                      pods=again.pods, problems=again.problems)).to_json() == first


COMPILER = IncrementalCompiler(ClusterState(bindings=[
    SecretBinding.model_validate(binding_doc("app", "team"))]))


@st.composite
def review(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "mutated", "truncated", "bytes"]))
    pod_body = pod_doc("p", "team", labels={"app": "app"})
    del pod_body["metadata"]["namespace"]
    valid = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
             "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                         "operation": "CREATE", "namespace": "team", "object": pod_body}}
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    body = draw(mutated(valid)) if kind == "mutated" else valid
    raw = json.dumps(body).encode()
    if kind == "truncated":
        return raw[: draw(st.integers(0, len(raw)))]
    return raw


@FUZZ
@given(review())
def test_webhook_answers_200_or_400_never_raises(body: bytes) -> None:
    answer = admit(body, COMPILER, InjectorSettings())
    assert answer.status in (200, 400)
    text = json.dumps(answer.body)
    assert "Traceback" not in text
    if answer.status == 200:
        assert answer.body["response"]["uid"] is not None
