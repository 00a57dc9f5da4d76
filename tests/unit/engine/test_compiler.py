"""compile(): conflicts, policies, determinism, and incremental == full."""

from __future__ import annotations

import random
from typing import Any

from cloudtaser.engine.compiler import ClusterState, IncrementalCompiler, compile_state
from cloudtaser.engine.kube import Namespace, Pod
from cloudtaser.engine.plans import ProtectionFlag
from cloudtaser.engine.resources import EnforcementPolicy, SecretBinding
from tests.harness.documents import binding_doc, pod_doc, policy_doc


def state(*docs: dict[str, Any]) -> ClusterState:
    kinds = {
        "SecretBinding": ("bindings", SecretBinding),
        "EnforcementPolicy": ("policies", EnforcementPolicy),
        "Pod": ("pods", Pod),
        "Namespace": ("namespaces", Namespace),
    }
    fields: dict[str, list[Any]] = {"bindings": [], "policies": [], "pods": [], "namespaces": []}
    for doc in docs:
        field, model = kinds[doc["kind"]]
        fields[field].append(model.model_validate(doc))
    return ClusterState(**fields)


def ns_doc(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def test_selected_pod_gets_a_wrapper_config_per_container() -> None:
    plan = compile_state(state(binding_doc("app"), pod_doc(labels={"app": "app"})))
    assert [p.name for p in plan.pods] == ["app-1"]
    config = plan.pods[0].containers[0].config
    assert config.sources[0].binding == "team/app"
    assert config.sources[0].secrets[0].keys[0].env == "PASSWORD"
    assert config.agent.required is True  # built-in default policy enforces
    assert plan.bindings[0].matched_pods == 1 and plan.bindings[0].injected_pods == 0
    assert plan.bpf == []  # not injected yet: nothing for the agent


def test_pod_without_inject_annotation_or_other_labels_is_not_selected() -> None:
    plan = compile_state(
        state(
            binding_doc("app"),
            pod_doc("a", labels={"app": "app"}, inject=False),
            pod_doc("b", labels={"app": "other"}),
            pod_doc("c", namespace="elsewhere", labels={"app": "app"}),
        )
    )
    assert plan.pods == []
    assert plan.bindings[0].matched_pods == 0


def test_env_conflict_first_binding_by_name_wins_and_loser_is_told() -> None:
    a = binding_doc("a", selector={"matchLabels": {"app": "x"}})
    b = binding_doc("b", selector={"matchLabels": {"app": "x"}})
    b["spec"]["secrets"][0]["keys"].append({"key": "other", "env": "OTHER"})
    plan = compile_state(state(b, a, pod_doc(labels={"app": "x"})))
    sources = plan.pods[0].containers[0].config.sources
    assert [s.binding for s in sources] == ["team/a", "team/b"]
    assert [k.env for k in sources[1].secrets[0].keys] == ["OTHER"]
    [problem] = [p for p in plan.problems if p.severity == "error"]
    assert (problem.name, problem.path) == ("b", "spec.secrets[0].keys[0].env")
    assert "also delivered by SecretBinding team/a" in problem.message


def test_policies_combine_stricter_wins() -> None:
    plan = compile_state(
        state(
            binding_doc("app"),
            pod_doc(labels={"app": "app"}, injected=True),
            policy_doc(
                "audit",
                mode="audit",
                protections={"mem": False},
                allowedAccessors=[{"executable": "/usr/bin/gdb"}, {"executable": "/bin/x"}],
            ),
            policy_doc(
                "enforce",
                protections={"environ": False, "coreDump": False},
                killOnViolation=True,
                allowedAccessors=[{"executable": "/bin/x"}],
            ),
        )
    )
    policy = plan.bpf[0].policy
    assert policy.mode == "enforce" and policy.kill_on_violation
    assert policy.protections == ["core_dump", "environ", "fds", "mem", "pidfd_getfd", "ptrace"]
    assert policy.allowed_accessors == ["/bin/x"]
    assert policy.flags & ProtectionFlag.KILL and not policy.flags & ProtectionFlag.AUDIT_ONLY
    [warning] = [p for p in plan.problems if p.kind == "EnforcementPolicy"]
    assert warning.name == "audit" and "EnforcementPolicy enforce (mode enforce)" in warning.message


def test_a_required_backend_is_required_when_any_policy_requires_it() -> None:
    """requireBackend combines like requireConfidentialNode (stricter wins), and the policies
    that ask for it list the pods they pin; the others do not."""
    docs = [
        binding_doc("app"),
        pod_doc(labels={"app": "app"}, injected=True),
        pod_doc("app-2", labels={"app": "app", "x": "y"}, injected=True),
    ]
    plain = compile_state(state(*docs, policy_doc("plain")))
    assert [p.policy.require_backend for p in plain.pods] == [None, None]
    assert plain.policies[0].constrained_pods == []
    plan = compile_state(
        state(
            *docs,
            policy_doc("plain"),
            policy_doc("lsm", requireBackend="lsm", podSelector={"matchLabels": {"x": "y"}}),
        )
    )
    assert {p.name: p.policy.require_backend for p in plan.pods} == {"app-1": None, "app-2": "lsm"}
    assert {p.pod: p.policy.require_backend for p in plan.bpf} == {"app-1": None, "app-2": "lsm"}
    assert not any(p.policy.require_confidential_node for p in plan.pods)
    assert {p.policy: p.constrained_pods for p in plan.policies} == {
        "lsm": ["team/app-2"],
        "plain": [],
    }


def test_namespace_selector_uses_namespace_labels_and_name() -> None:
    plan = compile_state(
        state(
            ns_doc("team", tier="prod"),
            binding_doc("app"),
            pod_doc(labels={"app": "app"}),
            policy_doc("prod", mode="audit", namespaceSelector={"matchLabels": {"tier": "prod"}}),
            policy_doc(
                "other", namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "x"}}
            ),
        )
    )
    assert plan.pods[0].policy.policies == ["prod"]
    assert plan.pods[0].policy.mode == "audit"
    assert plan.pods[0].containers[0].config.agent.required is False


def test_webhook_scope_lists_binding_namespaces_but_never_excluded_ones() -> None:
    plan = compile_state(
        state(binding_doc("a", "one"), binding_doc("b", "two"), binding_doc("c", "kube-system"))
    )
    assert plan.webhook.namespaces == ["one", "two"]
    assert plan.webhook.namespace_selector == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["one", "two"]}
        ]
    }
    assert any(p.name == "c" and p.path == "metadata.namespace" for p in plan.problems)
    empty = compile_state(ClusterState())
    assert empty.webhook.namespaces == []
    assert empty.webhook.namespace_selector["matchExpressions"][0]["operator"] == "DoesNotExist"


def _random_docs(rng: random.Random) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    apps = ["a", "b", "c", "d"]
    for ns in ("n1", "n2"):
        docs.append(ns_doc(ns, tier=rng.choice(["prod", "dev"])))
        for i, app in enumerate(apps):
            doc = binding_doc(f"{app}{i}", ns, selector={"matchLabels": {"app": rng.choice(apps)}})
            doc["spec"]["secrets"][0]["keys"][0]["env"] = rng.choice(["A", "B", "C"])
            docs.append(doc)
        for i in range(6):
            docs.append(
                pod_doc(f"p{i}", ns, labels={"app": rng.choice(apps)}, injected=rng.random() < 0.5)
            )
    docs.append(policy_doc("audit", mode="audit"))
    docs.append(policy_doc("prod", namespaceSelector={"matchLabels": {"tier": "prod"}}))
    return docs


def test_same_objects_in_any_order_give_identical_bytes() -> None:
    rng = random.Random(7)
    docs = _random_docs(rng)
    first = compile_state(state(*docs)).to_json()
    for _ in range(5):
        rng.shuffle(docs)
        assert compile_state(state(*docs)).to_json() == first


def test_incremental_updates_equal_a_full_compile() -> None:
    rng = random.Random(11)
    for _ in range(20):
        docs = _random_docs(rng)
        compiler = IncrementalCompiler(state(*docs))
        bindings = [d for d in docs if d["kind"] == "SecretBinding"]
        for _ in range(6):
            target = rng.choice(bindings)
            action = rng.random()
            if action < 0.4:
                target["spec"]["selector"] = {"matchLabels": {"app": rng.choice("abcd")}}
                compiler.set_binding(SecretBinding.model_validate(target))
            elif action < 0.6:
                bindings.remove(target)
                docs.remove(target)
                ref = f"{target['metadata']['namespace']}/{target['metadata']['name']}"
                compiler.remove_binding(ref)
                if not bindings:
                    break
            elif action < 0.8:
                pod = rng.choice([d for d in docs if d["kind"] == "Pod"])
                pod["metadata"]["labels"] = {"app": rng.choice("abcd")}
                compiler.set_pod(Pod.model_validate(pod))
            else:
                policy = policy_doc("late", mode=rng.choice(["audit", "enforce"]))
                docs = [d for d in docs if d["metadata"]["name"] != "late"] + [policy]
                compiler.set_policy(EnforcementPolicy.model_validate(policy))
            # after every change, not only at the end: plan() keeps its parts between calls
            assert compiler.plan().to_json() == compile_state(state(*docs)).to_json()
        assert compiler.plan().to_json() == compile_state(state(*docs)).to_json()


def test_namespace_pod_removal_and_parse_problems_equal_a_full_compile() -> None:
    """What the operator does besides bindings: namespaces relabelled or gone, pods deleted,
    and the parse problems of the objects that currently fail to parse."""
    from cloudtaser.engine.plans import Problem

    rng = random.Random(5)
    docs = _random_docs(rng)
    compiler = IncrementalCompiler(state(*docs))
    relabelled = ns_doc(
        "n1", tier="prod" if docs[0]["metadata"]["labels"]["tier"] == "dev" else "dev"
    )
    compiler.set_namespace(Namespace.model_validate(relabelled))
    docs = [
        relabelled if d["kind"] == "Namespace" and d["metadata"]["name"] == "n1" else d
        for d in docs
    ]
    compiler.remove_namespace("n2")
    docs = [d for d in docs if not (d["kind"] == "Namespace" and d["metadata"]["name"] == "n2")]
    gone = next(d for d in docs if d["kind"] == "Pod")
    compiler.remove_pod(gone["metadata"]["namespace"], gone["metadata"]["name"])
    docs.remove(gone)
    broken = Problem(
        kind="SecretBinding",
        namespace="n1",
        name="broken",
        path="spec.vault",
        message="field required",
    )
    compiler.set_parse_problems([broken])
    full = state(*docs)
    full.problems.append(broken)
    assert compiler.plan().to_json() == compile_state(full).to_json()
    compiler.set_parse_problems([])
    assert compiler.plan().to_json() == compile_state(state(*docs)).to_json()


def test_plan_pod_for_a_pod_under_admission_matches_compile() -> None:
    docs = [binding_doc("app"), policy_doc("base")]
    compiler = IncrementalCompiler(state(*docs))
    pod = Pod.model_validate(pod_doc(labels={"app": "app"}))
    admitted = compiler.plan_pod(pod)
    full = compile_state(state(*docs, pod_doc(labels={"app": "app"})))
    assert admitted is not None and admitted == full.pods[0]


def test_an_object_defined_twice_is_reported_and_the_choice_ignores_order() -> None:
    """Found by the property test: files can define one binding twice (a cluster cannot)."""
    one = binding_doc("a", selector={"matchLabels": {}})
    two = binding_doc("a", selector={"matchLabels": {"app": "a"}})
    forward = compile_state(state(one, two)).to_json()
    assert forward == compile_state(state(two, one)).to_json()
    plan = compile_state(state(one, two))
    assert [(p.name, p.message) for p in plan.problems if p.path == "metadata.name"] == [
        ("a", "defined more than once; one definition was used")
    ]


def test_every_kind_of_change_keeps_plan_equal_to_a_full_compile() -> None:
    """Model-based: random sequences of every change the operator makes (bindings, pods,
    policies, namespaces, parse problems, incl. an excluded namespace, confidential or backend
    requirements and audit/enforce overlaps), checking plan() after each step against a full compile of the
    same objects. plan() keeps its parts between calls, so each step must move them right."""
    from cloudtaser.engine.plans import Problem

    rng = random.Random(23)
    apps = ["a", "b", "c"]
    namespaces = ["n1", "n2", "kube-system"]
    for _ in range(25):
        objects: dict[tuple[str, str, str], dict[str, Any]] = {}

        def put(doc: dict[str, Any]) -> None:
            key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
            objects[key] = doc  # noqa: B023 (called in this iteration only)

        def take(kind: str) -> tuple[str, str, str] | None:
            """Remove a random object of ``kind`` (its key), or None when there is none."""
            keys = [k for k in objects if k[0] == kind]  # noqa: B023
            if not keys:
                return None
            key = rng.choice(keys)
            del objects[key]  # noqa: B023
            return key

        for ns in namespaces[:2]:
            put(ns_doc(ns, tier=rng.choice(["prod", "dev"])))
        compiler = IncrementalCompiler(state(*objects.values()))
        problems: list[Problem] = []
        for _ in range(30):
            action = rng.choice([0, 0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 7, 8])
            ns = rng.choice(namespaces)
            if action == 0:  # add or change a binding
                doc = binding_doc(
                    rng.choice(["x", "y", "z"]),
                    ns,
                    selector={"matchLabels": {"app": rng.choice(apps)}},
                )
                doc["spec"]["secrets"][0]["keys"][0]["env"] = rng.choice(["A", "B"])
                if rng.random() < 0.3:
                    doc["spec"]["refreshInterval"] = "5m"  # a warning on the env key
                put(doc)
                compiler.set_binding(SecretBinding.model_validate(doc))
            elif action == 1:  # remove a binding
                if key := take("SecretBinding"):
                    compiler.remove_binding(f"{key[1]}/{key[2]}")
            elif action == 2:  # add or relabel a pod, injected or not
                doc = pod_doc(
                    f"p{rng.randrange(4)}",
                    ns,
                    labels={"app": rng.choice(apps)},
                    injected=rng.random() < 0.5,
                )
                put(doc)
                compiler.set_pod(Pod.model_validate(doc))
            elif action == 3:  # delete a pod
                if key := take("Pod"):
                    compiler.remove_pod(key[1], key[2])
            elif action == 4:  # add or change a policy
                spec: dict[str, Any] = {"mode": rng.choice(["audit", "enforce"])}
                if rng.random() < 0.5:
                    spec["namespaceSelector"] = {
                        "matchLabels": {"tier": rng.choice(["prod", "dev"])}
                    }
                if rng.random() < 0.3:
                    spec["requireConfidentialNode"] = True
                if rng.random() < 0.3:
                    spec["requireBackend"] = "lsm"
                doc = policy_doc(rng.choice(["p1", "p2", "p3"]), **spec)
                put(doc)
                compiler.set_policy(EnforcementPolicy.model_validate(doc))
            elif action == 5:  # remove a policy
                if key := take("EnforcementPolicy"):
                    compiler.remove_policy(key[2])
            elif action == 6:  # relabel a namespace
                doc = ns_doc(rng.choice(namespaces[:2]), tier=rng.choice(["prod", "dev"]))
                put(doc)
                compiler.set_namespace(Namespace.model_validate(doc))
            elif action == 7:  # a namespace goes away (its pods and bindings stay here)
                name = rng.choice(namespaces[:2])
                if objects.pop(("Namespace", "", name), None) is not None:
                    compiler.remove_namespace(name)
            else:  # the objects failing to parse change
                problems = (
                    [
                        Problem(
                            kind="SecretBinding",
                            namespace=rng.choice(namespaces[:2]),
                            name=rng.choice(["x", "w"]),
                            path="spec.vault",
                            message="field required",
                        )
                    ]
                    if rng.random() < 0.7
                    else []
                )
                compiler.set_parse_problems(problems)
            full = state(*objects.values())
            full.problems.extend(problems)
            assert compiler.plan().to_json() == compile_state(full).to_json()
