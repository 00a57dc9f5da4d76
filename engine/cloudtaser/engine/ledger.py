"""The incremental compiler's books: the pods and bindings it holds, who selects whom, and
every figure the Plan reports, moved together by each change so that they cannot drift apart.

- Indexes, so a change finds what it touches without a scan: pods by namespace and by
  (namespace, label pair), the candidates a binding's matchLabels select; bindings by
  namespace (the webhook's scope) and by their first matchLabels pair (None without one),
  the candidates for a pod, as admission needs them.
- Per binding, moved by linking and unlinking a pod: pods matched, injected, delivered and
  failing (with the reason), and its rule and problems.
- Per pod, moved by ``record``, which first takes back what the pod's last plan added: its
  PodPlan and BpfEntry, the pods per policy and those it pins to nodes, audit/enforce
  overlaps, the plan's problems.
- The Plan's lists (rules, pod plans, BPF entries, problems) are kept in key order
  (engine.ordered), so ``plan()`` after a change copies lists instead of re-sorting; what
  ``plan()`` derives (summaries, the webhook scope) is cached until a change makes it stale.

``snapshot()`` gives the books as plain data, for tests: after any sequence of changes they
must equal the books of a compiler built from the resulting objects at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudtaser.engine.bindings import CompiledBinding, index_key, selects, wants_injection
from cloudtaser.engine.kube import LabelSelector, Pod
from cloudtaser.engine.ordered import OrderedMap
from cloudtaser.engine.plans import (
    NAMESPACE_NAME_LABEL,
    BindingSummary,
    BpfEntry,
    MutationRule,
    Plan,
    PodPlan,
    PolicySummary,
    Problem,
    WebhookScope,
)
from cloudtaser.engine.pods import DELIVERED, FAILING, PENDING, delivery, is_injected, pod_key
from cloudtaser.engine.policies import pins_nodes
from cloudtaser.engine.problems import Problems, binding_problem, invalid_refs, overlap_problems
from cloudtaser.engine.resources import EnforcementPolicy

PodKey = tuple[str, str]


@dataclass(slots=True)
class PodEntry:
    """One pod in the books: the bindings selecting it and what its plan contributes."""

    pod: Pod
    namespace: str
    key: PodKey
    injected: bool = False
    delivery: tuple[str, str] = (PENDING, "")
    bindings: set[str] = field(default_factory=set)
    plan: PodPlan | None = None
    # What this pod's plan adds to the per-policy figures, kept so a replan can take it back.
    policies: tuple[str, ...] = ()
    constrained: tuple[str, ...] = ()
    overlaps: tuple[tuple[str, str], ...] = ()


class Ledger:
    """The indexes and figures of the incremental compiler (see the module docstring).

    ``pods`` and ``bindings`` are read-only to callers: every change goes through a method,
    which moves everything that depends on it.
    """

    def __init__(self, excluded: frozenset[str]) -> None:
        self.excluded = excluded
        self.pods: dict[PodKey, PodEntry] = {}
        self._ns_pods: dict[str, set[PodKey]] = defaultdict(set)
        # namespace -> (label key, value) -> pod keys; the candidate index for matchLabels.
        self._label_index: dict[str, dict[tuple[str, str], set[PodKey]]] = defaultdict(
            lambda: defaultdict(set)
        )
        self.bindings: dict[str, CompiledBinding] = {}
        self._by_namespace: dict[str, set[str]] = defaultdict(set)
        # namespace -> first matchLabels pair -> binding refs (bindings without matchLabels
        # under None): the candidate index for pods, as the admission path needs it.
        self._binding_index: dict[str, dict[tuple[str, str] | None, set[str]]] = defaultdict(
            lambda: defaultdict(set)
        )
        self._rules: OrderedMap[str, MutationRule] = OrderedMap()
        self._binding_problems: dict[str, list[Problem]] = {}
        self._parse_problems: list[Problem] = []
        self._matched: dict[str, int] = defaultdict(int)
        self._injected_pods: dict[str, int] = defaultdict(int)
        self._delivered: dict[str, int] = defaultdict(int)
        self._failing: dict[str, dict[PodKey, str]] = defaultdict(dict)
        self._pod_plans: OrderedMap[PodKey, PodPlan] = OrderedMap()
        self._bpf: OrderedMap[PodKey, BpfEntry] = OrderedMap()
        self._policy_pods: dict[str, int] = defaultdict(int)
        self._constrained: dict[str, set[PodKey]] = defaultdict(set)
        self._overlaps: dict[tuple[str, str], int] = defaultdict(int)
        self._problems = Problems()
        # Derived by plan(), kept until a change makes them stale.
        self._summaries: OrderedMap[str, BindingSummary] = OrderedMap()
        self._stale_summaries: set[str] = set()
        self._policy_summaries: dict[str, PolicySummary] = {}
        self._scope: WebhookScope | None = None
        for ordered in (
            self._rules,
            self._summaries,
            self._pod_plans,
            self._bpf,
            self._problems.ordered,
        ):
            ordered.unsort()  # a bulk load follows: sorted once, by the first plan()

    # --- pods -----------------------------------------------------------------------------

    def set_pod(self, pod: Pod) -> PodEntry:
        """Add or replace one pod, linked to the bindings selecting it; its plan is for the
        caller to ``record``."""
        key = pod_key(pod)
        self.remove_pod(*key)
        injected = is_injected(pod)
        entry = PodEntry(
            pod=pod,
            namespace=key[0],
            key=key,
            injected=injected,
            delivery=delivery(pod) if injected else (PENDING, ""),
        )
        self.pods[key] = entry
        self._ns_pods[key[0]].add(key)
        for item in pod.metadata.labels.items():
            self._label_index[key[0]][item].add(key)
        for ref in self.bindings_for(key[0], pod):
            self._link(entry, ref)
        return entry

    def remove_pod(self, namespace: str, name: str) -> None:
        """Drop one pod and everything it contributed."""
        entry = self.pods.pop((namespace, name), None)
        if entry is None:
            return
        self._uncount(entry)
        for ref in list(entry.bindings):
            self._unlink(entry, ref)
        self._ns_pods[namespace].discard(entry.key)
        for item in entry.pod.metadata.labels.items():
            self._label_index[namespace][item].discard(entry.key)

    def pods_in(self, namespace: str) -> set[PodKey]:
        """Keys of the known pods of one namespace (a new set)."""
        return set(self._ns_pods.get(namespace, ()))

    def record(
        self, entry: PodEntry, plan: PodPlan | None, policies: Mapping[str, EnforcementPolicy]
    ) -> None:
        """Make ``plan`` the pod's plan: take back what its last plan contributed, then count
        what this one does (``policies``: the known policies, by name)."""
        self._uncount(entry)
        entry.plan = plan
        if plan is None:
            return
        key = entry.key
        self._pod_plans.put(key, plan)
        if entry.injected:
            self._bpf.put(
                key,
                BpfEntry(
                    namespace=entry.namespace,
                    pod=entry.pod.metadata.name,
                    uid=entry.pod.metadata.uid,
                    node=entry.pod.spec.node_name,
                    policy=plan.policy,
                ),
            )
        names = tuple(plan.policy.policies)
        modes = {n: policies[n].spec.mode for n in names}
        entry.policies = names
        entry.constrained = tuple(n for n in names if pins_nodes(policies[n]))
        entry.overlaps = (
            tuple(
                (audit, enforce)
                for audit in names
                if modes[audit] == "audit"
                for enforce in names
                if modes[enforce] == "enforce"
            )
            if plan.policy.mode == "enforce"
            else ()
        )
        for name in names:
            self._policy_pods[name] += 1
            self._policy_summaries.pop(name, None)
        for name in entry.constrained:
            self._constrained[name].add(key)
        for pair in entry.overlaps:
            self._overlaps[pair] += 1
        self._problems.add(plan.problems)

    def _uncount(self, entry: PodEntry) -> None:
        """Take back what one pod's plan contributed (before a replan or its removal)."""
        plan = entry.plan
        if plan is None:
            return
        key = entry.key
        self._pod_plans.pop(key)
        self._bpf.pop(key)
        for name in entry.policies:
            self._policy_pods[name] -= 1
            self._policy_summaries.pop(name, None)
        for name in entry.constrained:
            self._constrained[name].discard(key)
        for pair in entry.overlaps:
            self._overlaps[pair] -= 1
            if not self._overlaps[pair]:
                del self._overlaps[pair]
        self._problems.remove(plan.problems)
        entry.plan, entry.policies, entry.constrained, entry.overlaps = None, (), (), ()

    def policies_changed(self) -> None:
        """A policy was added, changed or removed: every policy summary is stale."""
        self._policy_summaries.clear()

    # --- bindings -------------------------------------------------------------------------

    def set_binding(self, compiled: CompiledBinding) -> set[PodKey]:
        """Add or replace one binding and link the pods it now selects; returns the keys of
        the pods it selected before or selects now (whose plans the caller must record)."""
        old = self._drop_binding(compiled.ref)
        affected = set(self._select(old)) if old else set()
        self._put_binding(compiled)
        now = set(self._select(compiled))
        for key in affected - now:
            self._unlink(self.pods[key], compiled.ref)
        for key in now:
            self._link(self.pods[key], compiled.ref)
        return affected | now

    def remove_binding(self, ref: str) -> set[PodKey]:
        """Drop one binding (namespace/name); returns the keys of the pods it selected."""
        old = self._drop_binding(ref)
        if old is None:
            return set()
        affected = set(self._select(old))
        for key in affected:
            self._unlink(self.pods[key], ref)
        self._matched.pop(ref, None)
        self._injected_pods.pop(ref, None)
        self._delivered.pop(ref, None)
        self._failing.pop(ref, None)
        return affected

    def bindings_for(self, namespace: str, pod: Pod) -> list[str]:
        """Refs of the bindings selecting ``pod``: candidates from the index, then checked."""
        if not wants_injection(pod):
            return []
        index = self._binding_index.get(namespace)
        if not index:
            return []
        candidates = set(index.get(None, ()))
        for item in pod.metadata.labels.items():
            candidates.update(index.get(item, ()))
        return [ref for ref in candidates if selects(self.bindings[ref], pod)]

    def _select(self, compiled: CompiledBinding) -> list[PodKey]:
        """Keys of the known pods a binding selects, through the label index."""
        selector = compiled.selector
        index = self._label_index.get(compiled.namespace)
        if index is None:
            return []
        candidates: set[PodKey] | None = None
        for item in selector.match_labels.items():
            found = index.get(item, set())
            candidates = set(found) if candidates is None else candidates & found
            if not candidates:
                return []
        if candidates is None:
            candidates = self._ns_pods.get(compiled.namespace, set())
        return [k for k in candidates if selects(compiled, self.pods[k].pod)]

    def _link(self, entry: PodEntry, ref: str) -> None:
        """Binding ``ref`` selects this pod (counted for the binding's status)."""
        if ref in entry.bindings:
            return
        entry.bindings.add(ref)
        self._matched[ref] += 1
        if entry.injected:
            self._injected_pods[ref] += 1
            state, reason = entry.delivery
            if state == DELIVERED:
                self._delivered[ref] += 1
            elif state == FAILING:
                self._failing[ref][entry.key] = reason
        self._stale_summaries.add(ref)

    def _unlink(self, entry: PodEntry, ref: str) -> None:
        if ref not in entry.bindings:
            return
        entry.bindings.discard(ref)
        self._matched[ref] -= 1
        if entry.injected:
            self._injected_pods[ref] -= 1
            state = entry.delivery[0]
            if state == DELIVERED:
                self._delivered[ref] -= 1
            elif state == FAILING:
                self._failing[ref].pop(entry.key, None)
        self._stale_summaries.add(ref)

    def _put_binding(self, compiled: CompiledBinding) -> None:
        """Index a compiled binding (any old one with its ref was dropped first)."""
        ref = compiled.ref
        self.bindings[ref] = compiled
        refs = self._by_namespace[compiled.namespace]
        if not refs:
            self._scope = None
        refs.add(ref)
        self._binding_index[compiled.namespace][index_key(compiled)].add(ref)
        self._rules.put(
            ref,
            MutationRule(
                binding=ref,
                namespace=compiled.namespace,
                selector=compiled.selector,
                containers=sorted(compiled.containers),
            ),
        )
        problems = list(compiled.problems)
        if compiled.namespace in self.excluded:
            problems.append(
                binding_problem(
                    (compiled.namespace, compiled.name),
                    "metadata.namespace",
                    f"namespace {compiled.namespace} is excluded from injection "
                    "(the operator's own namespace and kube-system never are)",
                    "error",
                )
            )
        if problems:
            self._binding_problems[ref] = problems
            self._problems.add(problems)
        self._stale_summaries.add(ref)

    def _drop_binding(self, ref: str) -> CompiledBinding | None:
        """Unindex a binding; the pods it selected stay linked (the caller decides)."""
        old = self.bindings.pop(ref, None)
        if old is None:
            return None
        refs = self._by_namespace[old.namespace]
        refs.discard(ref)
        if not refs:
            self._scope = None
        self._binding_index[old.namespace][index_key(old)].discard(ref)
        self._rules.pop(ref)
        self._problems.remove(self._binding_problems.pop(ref, ()))
        self._stale_summaries.add(ref)
        return old

    # --- problems of objects that failed to parse -----------------------------------------

    def set_parse_problems(self, problems: Iterable[Problem]) -> None:
        """Replace the problems of objects that failed to parse."""
        new = list(problems)
        if new == self._parse_problems:
            return
        self._stale_summaries.update(invalid_refs(self._parse_problems))
        self._problems.remove(self._parse_problems)
        self._parse_problems = new
        self._problems.add(new)
        self._stale_summaries.update(invalid_refs(new))

    # --- the Plan -------------------------------------------------------------------------

    def plan(self, policies: Iterable[str]) -> Plan:
        """The whole Plan, with a summary for each of ``policies`` (names of the known ones):
        lists in key order, figures as the last change left them."""
        invalid = invalid_refs(self._parse_problems) if self._stale_summaries else set()
        for ref in self._stale_summaries:
            compiled = self.bindings.get(ref)
            if compiled is not None:
                failing = self._failing.get(ref, {})
                first = min(failing) if failing else None
                self._summaries.put(
                    ref,
                    BindingSummary(
                        binding=ref,
                        valid=True,
                        matched_pods=self._matched.get(ref, 0),
                        injected_pods=self._injected_pods.get(ref, 0),
                        secrets=compiled.secrets,
                        delivered_pods=self._delivered.get(ref, 0),
                        failing_pods=len(failing),
                        failure=f"{first[0]}/{first[1]}: {failing[first]}" if first else "",
                    ),
                )
            elif ref in invalid:
                self._summaries.put(
                    ref,
                    BindingSummary(
                        binding=ref, valid=False, matched_pods=0, injected_pods=0, secrets=0
                    ),
                )
            else:
                self._summaries.pop(ref)
        self._stale_summaries.clear()
        summaries = []
        for name in sorted(policies):
            summary = self._policy_summaries.get(name)
            if summary is None:
                summary = self._policy_summaries[name] = PolicySummary(
                    policy=name,
                    matched_pods=self._policy_pods.get(name, 0),
                    constrained_pods=[
                        f"{ns}/{pod}" for ns, pod in sorted(self._constrained.get(name, ()))
                    ],
                )
            summaries.append(summary)
        # Built without re-validation: every part is a model the compiler made and checked.
        return Plan.model_construct(
            rules=self._rules.values(),
            pods=self._pod_plans.values(),
            bpf=self._bpf.values(),
            webhook=self._webhook_scope(),
            bindings=self._summaries.values(),
            policies=summaries,
            problems=self._problems.listed(overlap_problems(self._overlaps)),
        )

    def _webhook_scope(self) -> WebhookScope:
        if self._scope is None:
            namespaces = sorted(
                ns for ns, refs in self._by_namespace.items() if refs and ns not in self.excluded
            )
            selector = LabelSelector.model_validate(
                {
                    "matchExpressions": [
                        {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": namespaces}
                    ]
                    if namespaces
                    else [{"key": NAMESPACE_NAME_LABEL, "operator": "DoesNotExist"}]
                }
            )
            self._scope = WebhookScope(
                namespaces=namespaces,
                namespace_selector=selector.model_dump(by_alias=True, exclude_defaults=True),
            )
        return self._scope

    # --- for tests ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The books as plain data: empty sets and zero counts left out, and without what
        plan() derives. Two ledgers holding the same objects give equal snapshots, whatever
        changes led each there."""

        def sets(index: Mapping[Any, set[Any]]) -> dict[Any, list[Any]]:
            return {k: sorted(v) for k, v in index.items() if v}

        def counts(figures: Mapping[str, int]) -> dict[str, int]:
            return {k: v for k, v in figures.items() if v}

        return {
            "pods": {
                key: (
                    sorted(e.bindings),
                    e.injected,
                    e.delivery,
                    e.plan,
                    e.policies,
                    e.constrained,
                    e.overlaps,
                )
                for key, e in self.pods.items()
            },
            "ns_pods": sets(self._ns_pods),
            "label_index": {
                ns: found for ns, index in self._label_index.items() if (found := sets(index))
            },
            "bindings": dict(self.bindings),
            "by_namespace": sets(self._by_namespace),
            "binding_index": {
                ns: found for ns, index in self._binding_index.items() if (found := sets(index))
            },
            "rules": list(zip(self._rules.keys(), self._rules.values(), strict=True)),
            "binding_problems": {ref: p for ref, p in self._binding_problems.items() if p},
            "parse_problems": list(self._parse_problems),
            "matched": counts(self._matched),
            "injected_pods": counts(self._injected_pods),
            "delivered": counts(self._delivered),
            "failing": {ref: dict(f) for ref, f in self._failing.items() if f},
            "pod_plans": list(zip(self._pod_plans.keys(), self._pod_plans.values(), strict=True)),
            "bpf": list(zip(self._bpf.keys(), self._bpf.values(), strict=True)),
            "policy_pods": counts(self._policy_pods),
            "constrained": sets(self._constrained),
            "overlaps": {pair: n for pair, n in self._overlaps.items() if n},
            "problems": self._problems.counts(),
        }
