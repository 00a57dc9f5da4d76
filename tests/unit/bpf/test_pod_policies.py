"""PID -> pod: kubelet cgroup names, and each pod's flags compiled by the engine."""

from __future__ import annotations

from typing import Any

import pytest

from cloudtaser.bpf.cgroups import pod_uid_from_cgroups
from cloudtaser.bpf.watching import PodPolicies, flags_by_pod, selecting
from cloudtaser.engine.documents import parse_objects
from cloudtaser.engine.plans import ProtectionFlag
from tests.harness.documents import binding_doc, pod_doc
from tests.harness.pod_policies import UID, objects


@pytest.mark.parametrize(
    ("cgroup", "uid"),
    [
        (
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
            "cri-containerd-abc.scope",
            UID,
        ),
        (
            f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-abc.scope",
            UID,
        ),
        (f"12:memory:/kubepods/burstable/pod{UID}/0123abcd\n0::/", UID),
        ("0::/user.slice/user-0.slice/session-1.scope", None),
        ("0::/system.slice/podman.service", None),
    ],
)
def test_pod_uid_from_kubelet_cgroup_names(cgroup: str, uid: str | None) -> None:
    assert pod_uid_from_cgroups(cgroup) == uid


def test_flags_come_from_the_engine_for_injected_pods_only() -> None:
    entries = flags_by_pod(objects())
    assert set(entries) == {UID}
    assert entries[UID].policy.flags == ProtectionFlag.ENVIRON
    audit = flags_by_pod(objects("audit"))[UID].policy.flags
    assert audit == ProtectionFlag.ENVIRON | ProtectionFlag.AUDIT_ONLY
    not_injected = objects()
    del not_injected["Pod"][0]["metadata"]["annotations"]["cloudtaser.io/injected"]
    assert flags_by_pod(not_injected) == {}


def test_unknown_pod_triggers_one_relist_at_most_once_a_second() -> None:
    calls: list[int] = []
    now = [100.0]
    snapshots = [
        {"Pod": [], "SecretBinding": [], "EnforcementPolicy": [], "Namespace": []},
        objects(),
    ]

    def lister() -> dict[str, list[dict[str, Any]]]:
        calls.append(1)
        return snapshots[min(len(calls) - 1, 1)]

    policies = PodPolicies(lister, clock=lambda: now[0])
    policies.refresh()
    assert policies.entry(UID) is None and len(calls) == 1  # within a second: no relist
    now[0] += 1.5
    entry = policies.entry(UID)  # bound after the last list: found by the relist
    assert entry is not None and len(calls) == 2
    now[0] += 1.5
    assert policies.entry("ffffffff-0000-0000-0000-000000000000") is None and len(calls) == 3


def test_callers_during_a_relist_wait_for_it_instead_of_being_refused() -> None:
    """Two pods registering at once: the second caller's lookup must not miss because the
    first caller's relist (which finds both) had only just started."""
    import threading
    import time

    started = threading.Event()

    def slow_lister() -> dict[str, list[dict[str, Any]]]:
        started.set()
        time.sleep(0.5)  # a relist on a busy node
        return objects()

    policies = PodPolicies(slow_lister)
    found: list[object] = []
    first = threading.Thread(target=lambda: found.append(policies.entry(UID)))
    first.start()
    assert started.wait(5)
    found.append(policies.entry(UID))  # within the same second as the relist in flight
    first.join()
    assert all(entry is not None for entry in found) and len(found) == 2


def test_only_bindings_selecting_a_pod_here_are_kept_and_they_compile_the_same() -> None:
    """The agent drops, as it lists them, the bindings that select none of its pods
    (watching.selecting): what the engine compiles for the node's pods is unchanged."""
    listed = objects()
    bystander = pod_doc("bystander", "team", labels={"app": "app"}, inject=False)
    listed["Pod"].append(bystander)  # here, but asks for no injection
    bindings = [
        binding_doc("other", "team"),  # app=other: no pod here
        binding_doc(
            "expr",
            "team",
            selector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["app"]}]},
        ),
        binding_doc("broken", "team", vault={}),  # fails to parse: selects nothing
    ]
    for doc in [bystander, *bindings]:
        doc.pop("apiVersion")
        doc.pop("kind")
    listed["SecretBinding"] += bindings
    pods = parse_objects({"Pod": listed["Pod"]}).pods
    kept = list(selecting(listed["SecretBinding"], pods))
    assert [b["metadata"]["name"] for b in kept] == ["app", "expr"]
    everything = flags_by_pod(listed)
    assert everything and flags_by_pod({**listed, "SecretBinding": kept}) == everything
    only_bystander = [p for p in pods if p.metadata.name == "bystander"]
    assert list(selecting(listed["SecretBinding"], only_bystander)) == []
