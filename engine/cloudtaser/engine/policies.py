"""EnforcementPolicies: which ones select a pod, and what they add up to for it.

``effective_policy`` combines the policies selecting one pod (the stricter setting wins
everywhere). ``Policies`` holds the known policies and namespace labels and finds a pod's
effective policy through two caches (policies by namespace, combinations by policy names)
that a policy or namespace change drops.
"""

from __future__ import annotations

from cloudtaser.engine.kube import Namespace, Pod
from cloudtaser.engine.plans import NAMESPACE_NAME_LABEL, EffectivePolicy, ProtectionFlag
from cloudtaser.engine.resources import EnforcementPolicy

_PROTECTION_BITS = ProtectionFlag.protections()  # Protections' field names -> their bits


def _accessor_key(executable: str, uid: int | None) -> str:
    return executable if uid is None else f"{executable}:{uid}"


def effective_policy(policies: list[EnforcementPolicy]) -> EffectivePolicy:
    """Combine the policies selecting one pod: the stricter setting wins everywhere.

    With no policy the pod gets the built-in default: enforce every protection, no kill.
    """
    if not policies:
        flags = 0
        for bit in _PROTECTION_BITS.values():
            flags |= bit
        return EffectivePolicy(
            policies=[],
            mode="enforce",
            flags=flags,
            protections=sorted(_PROTECTION_BITS),
            allowed_accessors=[],
            kill_on_violation=False,
            require_confidential_node=False,
        )
    mode = "enforce" if any(p.spec.mode == "enforce" for p in policies) else "audit"
    names: set[str] = set()
    for policy in policies:
        for name in _PROTECTION_BITS:
            if getattr(policy.spec.protections, name):
                names.add(name)
    # An accessor is allowed only when every policy allows it (intersection = stricter).
    allowed: set[str] | None = None
    for policy in policies:
        keys = {_accessor_key(a.executable, a.uid) for a in policy.spec.allowed_accessors}
        allowed = keys if allowed is None else allowed & keys
    kill = any(p.spec.kill_on_violation for p in policies)
    flags = 0
    for name in names:
        flags |= _PROTECTION_BITS[name]
    if mode == "audit":
        flags |= ProtectionFlag.AUDIT_ONLY
    if kill:
        flags |= ProtectionFlag.KILL
    return EffectivePolicy(
        policies=sorted(p.metadata.name for p in policies),
        mode=mode,
        flags=int(flags),
        protections=sorted(names),
        allowed_accessors=sorted(allowed or ()),
        kill_on_violation=kill,
        require_confidential_node=any(p.spec.require_confidential_node for p in policies),
        # One backend can be required today, so "required by any" is the stricter setting.
        require_backend="lsm" if any(p.spec.require_backend == "lsm" for p in policies) else None,
    )


def pins_nodes(policy: EnforcementPolicy) -> bool:
    """The policy keeps its pods on particular nodes (its status lists them)."""
    return policy.spec.require_confidential_node or policy.spec.require_backend is not None


class Policies:
    """The known EnforcementPolicies and namespace labels, and the effective policy of a pod.

    ``by_name`` is read-only to callers: change it through the methods, which drop the caches.
    """

    def __init__(self) -> None:
        self.by_name: dict[str, EnforcementPolicy] = {}
        self._namespace_labels: dict[str, dict[str, str]] = {}
        # Derived caches, dropped whenever a policy or namespace changes.
        self._ns_policies: dict[str, list[EnforcementPolicy]] = {}
        self._effective: dict[tuple[str, ...], EffectivePolicy] = {}

    def set_policy(self, policy: EnforcementPolicy) -> None:
        self.by_name[policy.metadata.name] = policy
        self._ns_policies.clear()
        self._effective.clear()

    def remove_policy(self, name: str) -> bool:
        """Forget one policy; False when it was not known (nothing changed)."""
        if self.by_name.pop(name, None) is None:
            return False
        self._ns_policies.clear()
        self._effective.clear()
        return True

    def set_namespace(self, namespace: Namespace) -> None:
        self._namespace_labels[namespace.metadata.name] = dict(namespace.metadata.labels)
        self._ns_policies.pop(namespace.metadata.name, None)

    def remove_namespace(self, name: str) -> bool:
        """Forget one namespace's labels; False when it was not known (nothing changed)."""
        if self._namespace_labels.pop(name, None) is None:
            return False
        self._ns_policies.pop(name, None)
        return True

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        """The namespace's labels, with the name label the API server sets on every one."""
        labels = self._namespace_labels.get(namespace)
        if labels is None:
            return {NAMESPACE_NAME_LABEL: namespace}
        return {NAMESPACE_NAME_LABEL: namespace, **labels}

    def effective(self, namespace: str, pod: Pod) -> EffectivePolicy:
        """The combination of the policies selecting ``pod`` in ``namespace``."""
        in_namespace = self._ns_policies.get(namespace)
        if in_namespace is None:
            ns_labels = self.namespace_labels(namespace)
            in_namespace = [
                self.by_name[name]
                for name in sorted(self.by_name)
                if self.by_name[name].spec.namespace_selector.matches(ns_labels)
            ]
            self._ns_policies[namespace] = in_namespace
        labels = pod.metadata.labels
        chosen = [p for p in in_namespace if p.spec.pod_selector.matches(labels)]
        key = tuple(p.metadata.name for p in chosen)
        policy = self._effective.get(key)
        if policy is None:
            policy = self._effective[key] = effective_policy(chosen)
        return policy
