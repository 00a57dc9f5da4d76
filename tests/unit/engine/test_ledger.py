"""The incremental compiler's books (engine.ledger): every index and figure moves with the
change that moves it. A change taken back leaves the books as they were, and after any
sequence of changes they equal the books of a compiler built from the resulting objects at
once (not only the Plan: the counts behind it, so a drift that the Plan hides is caught)."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudtaser.engine.bindings import compile_binding
from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler, compile_state
from cloudtaser.engine.documents import parse_objects
from cloudtaser.engine.kube import Namespace, Pod
from cloudtaser.engine.ledger import Ledger
from cloudtaser.engine.plans import Problem
from cloudtaser.engine.resources import EnforcementPolicy, SecretBinding
from tests.harness.documents import binding_doc, pod_doc, policy_doc
from tests.harness.strategies import LABELS, binding, pod, policy

EXAMPLES = int(os.environ.get("CLOUDTASER_FUZZ_EXAMPLES", "150"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
Key = tuple[str, str, str]


def books(compiler: IncrementalCompiler) -> dict[str, Any]:
    return compiler._ledger.snapshot()  # the books behind the Plan, which this file checks


def running(doc: dict[str, Any]) -> dict[str, Any]:
    doc["status"] = {
        "containerStatuses": [
            {"name": c["name"], "state": {"running": {}}} for c in doc["spec"]["containers"]
        ]
    }
    return doc


def test_a_ledger_built_empty_and_one_emptied_again_are_equal() -> None:
    empty = books(IncrementalCompiler(ClusterState()))
    compiler = IncrementalCompiler(ClusterState())
    compiler.set_namespace(
        Namespace.model_validate({"metadata": {"name": "team", "labels": {"tier": "prod"}}})
    )
    compiler.set_policy(EnforcementPolicy.model_validate(policy_doc("audit", mode="audit")))
    compiler.set_policy(
        EnforcementPolicy.model_validate(policy_doc("pinned", mode="enforce", requireBackend="lsm"))
    )
    compiler.set_binding(SecretBinding.model_validate(binding_doc("app", refreshInterval="5m")))
    compiler.set_binding(SecretBinding.model_validate(binding_doc("all", selector={})))
    compiler.set_binding(SecretBinding.model_validate(binding_doc("sys", "kube-system")))
    compiler.set_pod(Pod.model_validate(running(pod_doc("p1", injected=True))))
    compiler.set_pod(Pod.model_validate(pod_doc("p2", labels={"app": "app", "tier": "x"})))
    compiler.set_parse_problems(
        [
            Problem(
                kind="SecretBinding",
                namespace="team",
                name="bad",
                path="spec",
                message="field required",
            )
        ]
    )
    compiler.plan()
    full = books(compiler)
    assert full != empty
    assert full["matched"] == {"team/all": 2, "team/app": 2}
    assert full["injected_pods"] == {"team/all": 1, "team/app": 1}
    assert full["delivered"] == {"team/all": 1, "team/app": 1}
    assert full["policy_pods"] == {"audit": 2, "pinned": 2}
    assert full["constrained"] == {"pinned": [("team", "p1"), ("team", "p2")]}
    assert full["overlaps"] == {("audit", "pinned"): 2}
    assert set(full["binding_problems"]) == {"team/all", "team/app", "kube-system/sys"}

    compiler.remove_pod("team", "p1")
    compiler.remove_binding("team/app")
    compiler.remove_policy("pinned")
    compiler.remove_binding("team/all")
    compiler.remove_namespace("team")
    compiler.remove_pod("team", "p2")
    compiler.remove_policy("audit")
    compiler.remove_binding("kube-system/sys")
    compiler.set_parse_problems([])
    compiler.plan()
    assert books(compiler) == empty


def test_a_binding_replaced_moves_its_pods_counts_and_problems_together() -> None:
    ledger = Ledger(frozenset({"kube-system"}))
    a = ledger.set_pod(
        Pod.model_validate(running(pod_doc("a", labels={"app": "x"}, injected=True)))
    )
    b = ledger.set_pod(Pod.model_validate(pod_doc("b", labels={"app": "y"})))
    assert ledger.set_binding(
        compile_binding(
            SecretBinding.model_validate(binding_doc("s", selector={"matchLabels": {"app": "x"}}))
        )
    ) == {("team", "a")}
    assert (a.bindings, b.bindings) == ({"team/s"}, set())
    assert ledger.snapshot()["delivered"] == {"team/s": 1}
    # now it selects b instead: both are affected, a is unlinked, b linked
    assert ledger.set_binding(
        compile_binding(
            SecretBinding.model_validate(
                binding_doc("s", selector={"matchLabels": {"app": "y"}}, refreshInterval="1m")
            )
        )
    ) == {("team", "a"), ("team", "b")}
    assert (a.bindings, b.bindings) == (set(), {"team/s"})
    books = ledger.snapshot()
    assert (books["matched"], books["injected_pods"], books["delivered"]) == ({"team/s": 1}, {}, {})
    assert [p.path for p in books["binding_problems"]["team/s"]] == ["spec.secrets[0].keys[0].env"]
    assert ledger.remove_binding("team/s") == {("team", "b")}
    assert ledger.remove_binding("team/s") == set()
    empty = Ledger(frozenset({"kube-system"}))
    for name in ("a", "b"):
        ledger.remove_pod("team", name)
    assert ledger.snapshot() == empty.snapshot()


NAMESPACE = st.builds(
    lambda name, labels: {"metadata": {"name": name, "labels": labels}},
    st.sampled_from(["team", "shop"]),
    LABELS,
)
CHANGES = st.lists(
    st.one_of(
        st.tuples(st.just("SecretBinding"), binding()),
        st.tuples(st.just("EnforcementPolicy"), policy()),
        st.tuples(st.just("Pod"), pod()),
        st.tuples(st.just("Namespace"), NAMESPACE),
        st.tuples(st.just("remove"), st.integers(0, 99)),
    ),
    max_size=14,
)


def _apply(compiler: IncrementalCompiler, objects: dict[Key, Any], kind: str, doc: Any) -> None:
    """One change to both the compiler and the objects it should now hold."""
    if kind == "remove":
        if not objects:
            return
        key = sorted(objects)[doc % len(objects)]
        del objects[key]
        if key[0] == "SecretBinding":
            compiler.remove_binding(f"{key[1]}/{key[2]}")
        elif key[0] == "EnforcementPolicy":
            compiler.remove_policy(key[2])
        elif key[0] == "Pod":
            compiler.remove_pod(key[1], key[2])
        else:
            compiler.remove_namespace(key[2])
        return
    parsed = parse_objects({kind: [doc]})
    for model in parsed.bindings:
        objects[(kind, model.metadata.namespace or "default", model.metadata.name)] = model
        compiler.set_binding(model)
    for pod_model in parsed.pods:
        objects[(kind, pod_model.metadata.namespace or "default", pod_model.metadata.name)] = (
            pod_model
        )
        compiler.set_pod(pod_model)
    for policy_model in parsed.policies:
        objects[(kind, "", policy_model.metadata.name)] = policy_model
        compiler.set_policy(policy_model)
    for namespace in parsed.namespaces:
        objects[(kind, "", namespace.metadata.name)] = namespace
        compiler.set_namespace(namespace)


@PROPERTY
@given(CHANGES)
def test_books_after_any_changes_equal_a_compile_of_the_result(
    changes: list[tuple[str, Any]],
) -> None:
    compiler = IncrementalCompiler(ClusterState())
    objects: dict[Key, Any] = {}
    for kind, doc in changes:
        _apply(compiler, objects, kind, doc)
    models = list(objects.values())
    state = ClusterState(
        bindings=[m for m in models if isinstance(m, SecretBinding)],
        policies=[m for m in models if isinstance(m, EnforcementPolicy)],
        pods=[m for m in models if isinstance(m, Pod)],
        namespaces=[m for m in models if isinstance(m, Namespace)],
    )
    assert books(compiler) == books(IncrementalCompiler(state))
    assert compiler.plan().to_json() == compile_state(state).to_json()
    while objects:  # and taking everything back leaves nothing behind
        _apply(compiler, objects, "remove", 0)
    assert books(compiler) == books(IncrementalCompiler(ClusterState()))
