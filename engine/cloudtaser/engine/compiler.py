"""compile(ClusterState) -> Plan, and the incremental compiler both paths share.

``compile_state`` is ``IncrementalCompiler(state).plan()``: a full compile is an incremental
compiler fed everything at once, so the operator's incremental path and the CLI's one-shot
path cannot drift apart (a test checks they give the same bytes).

Cost model: each binding is compiled once (engine.bindings: its WrapperSource and volumes);
pods are found through a per-namespace label index, so a binding with matchLabels touches
only candidate pods; a pod plan (engine.pods, under the policy engine.policies combines) is
recomputed only when one of its inputs changes. Every figure the Plan reports (pods per
binding and policy, problems, policy overlaps) is kept current by the change that moves it,
in one place (engine.ledger), and the Plan's lists are kept in key order (engine.ordered), so
``plan()`` after a change copies lists instead of re-deriving and re-sorting everything.

This module is the engine's public face for compiling: the names importers use from here
(the compiled binding, the pods' shared mounts and delivery states) are re-exported.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TypeVar

from pydantic import Field

from cloudtaser.engine.bindings import CompiledBinding, Delivery, compile_binding
from cloudtaser.engine.kube import Model, Namespace, Pod
from cloudtaser.engine.ledger import Ledger, PodEntry, PodKey
from cloudtaser.engine.plans import (
    POD_SECURITY_ENFORCE_LABEL,
    InjectorSettings,
    Plan,
    PodPlan,
    Problem,
)
from cloudtaser.engine.pods import (
    AGENT_MOUNT,
    BUNDLE_VOLUME,
    DELIVERED,
    FAILING,
    PENDING,
    TOKEN_MOUNT,
    PodPlanner,
    delivery,
    is_injected,
    pod_key,
)
from cloudtaser.engine.policies import Policies, effective_policy
from cloudtaser.engine.problems import duplicate_problem
from cloudtaser.engine.resources import EnforcementPolicy, SecretBinding

__all__ = [
    "AGENT_MOUNT",
    "BUNDLE_VOLUME",
    "DELIVERED",
    "FAILING",
    "PENDING",
    "TOKEN_MOUNT",
    "ClusterState",
    "CompiledBinding",
    "Delivery",
    "IncrementalCompiler",
    "compile_binding",
    "compile_state",
    "delivery",
    "effective_policy",
    "is_injected",
]

M = TypeVar("M", bound=Model)


class ClusterState(Model):
    """The compile input: the objects as the operator's indices (or files) hold them."""

    bindings: list[SecretBinding] = Field(default_factory=list)
    policies: list[EnforcementPolicy] = Field(default_factory=list)
    pods: list[Pod] = Field(default_factory=list)
    namespaces: list[Namespace] = Field(default_factory=list)
    settings: InjectorSettings = Field(default_factory=InjectorSettings)
    problems: list[Problem] = Field(
        default_factory=list, description="Problems of objects that failed to parse."
    )


def compile_state(state: ClusterState) -> Plan:
    """The Plan for a whole cluster state.

    A caller compiling a large state at once may pause the garbage collector around this
    (cloudtaser/gcpause.py says why); the engine leaves process state alone.
    """
    return IncrementalCompiler(state).plan()


def _unique(
    kind: str, items: Sequence[M], identity: Callable[[M], tuple[str, str]], problems: list[Problem]
) -> list[M]:
    """One object per identity. A cluster never holds two; files can. Which one is used
    must not depend on input order: the smallest serialisation wins, and it is reported
    (appended to ``problems``)."""
    chosen: dict[tuple[str, str], M] = {}
    for item in items:
        key = identity(item)
        if key in chosen:
            problems.append(duplicate_problem(kind, key))
            if item.model_dump_json() < chosen[key].model_dump_json():
                chosen[key] = item
        else:
            chosen[key] = item
    return [chosen[k] for k in sorted(chosen)]


class IncrementalCompiler:
    """Keeps the compiled pieces of a cluster state and recompiles only what a change touches.

    Pure like the rest of the engine: the same sequence of calls gives the same Plan.
    """

    def __init__(self, state: ClusterState) -> None:
        self.settings = state.settings
        self._excluded = frozenset(
            {self.settings.operator_namespace, *self.settings.excluded_namespaces}
        )
        self._planner = PodPlanner(self.settings)
        self._policies = Policies()
        self._ledger = Ledger(self._excluded)
        parse_problems = list(state.problems)
        namespaces = _unique(
            "Namespace", state.namespaces, lambda n: ("", n.metadata.name), parse_problems
        )
        policies = _unique(
            "EnforcementPolicy", state.policies, lambda p: ("", p.metadata.name), parse_problems
        )
        pods = _unique("Pod", state.pods, pod_key, parse_problems)
        bindings = _unique(
            "SecretBinding",
            state.bindings,
            lambda b: (b.metadata.namespace_or_default, b.metadata.name),
            parse_problems,
        )
        for ns in namespaces:
            self._policies.set_namespace(ns)
        for policy in policies:
            self._policies.set_policy(policy)
        self._ledger.set_parse_problems(parse_problems)
        for pod in pods:
            self._ledger.set_pod(pod)
        for binding in bindings:
            self._ledger.set_binding(compile_binding(binding))
        for entry in self._ledger.pods.values():
            self._replan(entry)

    # --- changes ------------------------------------------------------------------------

    def set_binding(self, binding: SecretBinding) -> list[PodPlan]:
        """Add or replace one binding; returns the plans of the pods it affects."""
        return self._replan_keys(self._ledger.set_binding(compile_binding(binding)))

    def remove_binding(self, ref: str) -> list[PodPlan]:
        """Drop one binding (namespace/name); returns the plans of the pods it affected."""
        return self._replan_keys(self._ledger.remove_binding(ref))

    def set_policy(self, policy: EnforcementPolicy) -> list[PodPlan]:
        self._policies.set_policy(policy)
        self._ledger.policies_changed()
        return self._replan_keys(set(self._ledger.pods))

    def remove_policy(self, name: str) -> list[PodPlan]:
        if not self._policies.remove_policy(name):
            return []
        self._ledger.policies_changed()
        return self._replan_keys(set(self._ledger.pods))

    def set_namespace(self, namespace: Namespace) -> list[PodPlan]:
        self._policies.set_namespace(namespace)
        return self._replan_keys(self._ledger.pods_in(namespace.metadata.name))

    def remove_namespace(self, name: str) -> list[PodPlan]:
        """A namespace is gone: its labels no longer select policies."""
        if not self._policies.remove_namespace(name):
            return []
        return self._replan_keys(self._ledger.pods_in(name))

    def set_parse_problems(self, problems: Iterable[Problem]) -> None:
        """Replace the problems of objects that failed to parse (the operator re-parses only
        what changed, so it hands over the whole current list)."""
        self._ledger.set_parse_problems(problems)

    def set_pod(self, pod: Pod) -> PodPlan | None:
        entry = self._ledger.set_pod(pod)
        self._replan(entry)
        return entry.plan

    def remove_pod(self, namespace: str, name: str) -> None:
        self._ledger.remove_pod(namespace, name)

    # --- queries ------------------------------------------------------------------------

    def plan_pod(self, pod: Pod) -> PodPlan | None:
        """The plan for a pod not (yet) in the state, e.g. one under admission."""
        namespace = pod.metadata.namespace_or_default
        return self._build_plan(pod, namespace, self._ledger.bindings_for(namespace, pod))

    def plan(self) -> Plan:
        """The whole Plan: lists in key order, figures as the last change left them."""
        return self._ledger.plan(self._policies.by_name)

    # --- internals ----------------------------------------------------------------------

    def _replan_keys(self, keys: set[PodKey]) -> list[PodPlan]:
        plans = []
        for key in sorted(keys):
            entry = self._ledger.pods.get(key)
            if entry is not None:
                self._replan(entry)
                if entry.plan is not None:
                    plans.append(entry.plan)
        return plans

    def _replan(self, entry: PodEntry) -> None:
        """Rebuild one pod's plan; the ledger moves the figures it contributes to."""
        plan = self._build_plan(entry.pod, entry.namespace, entry.bindings)
        self._ledger.record(entry, plan, self._policies.by_name)

    def _build_plan(self, pod: Pod, namespace: str, refs: Collection[str]) -> PodPlan | None:
        if not refs or namespace in self._excluded:
            return None
        policy = self._policies.effective(namespace, pod)
        return self._planner.plan(
            pod,
            namespace,
            [self._ledger.bindings[ref] for ref in sorted(refs)],
            policy,
            self._policies.namespace_labels(namespace).get(POD_SECURITY_ENFORCE_LABEL),
        )
