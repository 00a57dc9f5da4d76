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
from tests.harness.documents import binding_doc, pod_doc
from tests.harness.strategies import binding, mutated, pod, policy

EXAMPLES = int(os.environ.get("CLOUDTASER_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _objects(
    bindings: list[dict[str, Any]], policies: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    return {"SecretBinding": bindings, "EnforcementPolicy": policies, "Pod": pods, "Namespace": []}


@FUZZ
@given(st.lists(binding(), max_size=4), st.lists(policy(), max_size=3), st.lists(pod(), max_size=4))
def test_compile_never_raises_and_is_deterministic(
    bindings: list[dict[str, Any]], policies: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> None:
    parsed = parse_objects(_objects(bindings, policies, pods))
    state = ClusterState(
        bindings=parsed.bindings,
        policies=parsed.policies,
        pods=parsed.pods,
        problems=parsed.problems,
    )
    first = compile_state(state).to_json()
    again = parse_objects(
        _objects(list(reversed(bindings)), list(reversed(policies)), list(reversed(pods)))
    )
    assert (
        compile_state(
            ClusterState(
                bindings=again.bindings,
                policies=again.policies,
                pods=again.pods,
                problems=again.problems,
            )
        ).to_json()
        == first
    )


COMPILER = IncrementalCompiler(
    ClusterState(bindings=[SecretBinding.model_validate(binding_doc("app", "team"))])
)


@st.composite
def review(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "mutated", "truncated", "bytes"]))
    pod_body = pod_doc("p", "team", labels={"app": "app"})
    del pod_body["metadata"]["namespace"]
    valid = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "team",
            "object": pod_body,
        },
    }
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
