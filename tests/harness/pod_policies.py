"""One injected pod under an "only-environ" EnforcementPolicy, as the node agent lists it: what
the unit tests (tests/unit/bpf) and the kernel tests (tests/kernel) feed PodPolicies."""

from __future__ import annotations

from typing import Any

from tests.harness.documents import binding_doc, pod_doc, policy_doc

UID = "0b9f3c1e-7d2a-4c55-9e61-2f1d8c3b4a70"  # the pod's; kernel tests name a cgroup after it


def objects(mode: str = "enforce") -> dict[str, list[dict[str, Any]]]:
    """The lists PodPolicies reads (kind -> objects, without apiVersion and kind), the policy in
    ``mode`` (enforce or audit)."""
    pod = pod_doc("app-1", "team", labels={"app": "app"}, injected=True)
    pod["metadata"]["uid"] = UID
    binding = binding_doc("app", "team")
    policy = policy_doc(
        "only-environ",
        mode=mode,
        protections={
            "mem": False,
            "fds": False,
            "ptrace": False,
            "pidfdGetfd": False,
            "coreDump": False,
        },
    )
    for doc in (pod, binding, policy):
        doc.pop("apiVersion")
        doc.pop("kind")
    return {
        "Pod": [pod],
        "SecretBinding": [binding],
        "EnforcementPolicy": [policy],
        "Namespace": [],
    }
