"""Problems: the ones the compiler itself words, and the counted set the Plan lists.

Many sources report problems: objects that failed to parse, each binding's own checks, each
pod's plan. ``Problems`` counts them, so a source takes back exactly what it added, and one
problem two sources report is listed once. The checks that find a problem word it where they
are (engine.bindings, engine.pods); what is made here is what no single check owns.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

from cloudtaser.engine.ordered import OrderedMap
from cloudtaser.engine.plans import Problem

ProblemKey = tuple[str, str, str, str, str, str]


def problem_key(problem: Problem) -> ProblemKey:
    return (*problem.sort_key(), problem.severity)


def binding_problem(identity: tuple[str, str], path: str, message: str, severity: str) -> Problem:
    """A problem of one SecretBinding (namespace, name), at ``path`` in it."""
    return Problem.model_validate(
        {
            "kind": "SecretBinding",
            "namespace": identity[0],
            "name": identity[1],
            "path": path,
            "message": message,
            "severity": severity,
        }
    )


def duplicate_problem(kind: str, identity: tuple[str, str]) -> Problem:
    """An object (namespace, name) defined more than once: files can, a cluster cannot."""
    return Problem(
        kind=kind,
        namespace=identity[0] or None,
        name=identity[1],
        path="metadata.name",
        message="defined more than once; one definition was used",
    )


def invalid_refs(problems: Iterable[Problem]) -> set[str]:
    """Bindings that failed to parse: listed in the Plan as invalid (if no valid one)."""
    return {
        f"{p.namespace or 'default'}/{p.name}"
        for p in problems
        if p.kind == "SecretBinding" and p.severity == "error"
    }


def overlap_problems(overlaps: Mapping[tuple[str, str], int]) -> list[Problem]:
    """Audit policies overridden by enforce policies on the same pods: (audit, enforce) ->
    how many pods."""
    return [
        Problem(
            kind="EnforcementPolicy",
            name=audit,
            path="spec.mode",
            message=f"audit mode is overridden on {count} pod(s) also selected by "
            f"EnforcementPolicy {enforce} (mode enforce); the stricter mode wins",
            severity="warning",
        )
        for (audit, enforce), count in sorted(overlaps.items())
    ]


class Problems:
    """Problems from many sources, counted: a source takes back exactly what it added, and
    one problem reported by two sources is listed once."""

    def __init__(self) -> None:
        self._counts: dict[ProblemKey, int] = {}
        self.ordered: OrderedMap[ProblemKey, Problem] = OrderedMap()

    def add(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            key = problem_key(problem)
            count = self._counts.get(key, 0)
            self._counts[key] = count + 1
            if not count:
                self.ordered.put(key, problem)

    def remove(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            key = problem_key(problem)
            count = self._counts[key] - 1
            if count:
                self._counts[key] = count
            else:
                del self._counts[key]
                self.ordered.pop(key)

    def counts(self) -> dict[ProblemKey, int]:
        """How many sources report each problem (a copy)."""
        return dict(self._counts)

    def listed(self, extra: Iterable[Problem]) -> list[Problem]:
        """All problems in order, with ``extra`` (derived at assembly time) merged in."""
        fresh = {k: p for p in extra if (k := problem_key(p)) not in self._counts}
        if not fresh:
            return self.ordered.values()
        keys, values = self.ordered.keys(), self.ordered.values()
        for key in sorted(fresh):
            at = bisect.bisect_left(keys, key)
            keys.insert(at, key)
            values.insert(at, fresh[key])
        return values
