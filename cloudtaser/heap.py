"""Handing freed memory back to the kernel (process state, shared by the long-lived
processes: the node agent and the operator).

glibc keeps memory a process freed in the middle of its heaps (and in each thread's arena)
for reuse, and it still counts as the process's RSS. After a bulk step (the agent's relist,
the operator's reconcile of 10k bindings: issue 17) that is megabytes no later step needs.
"""

from __future__ import annotations

import ctypes


def release_freed_memory() -> None:
    """Hand the free pages of the C heap back to the kernel (glibc's malloc_trim; elsewhere,
    musl for one, nothing)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_arenas(arenas: int = 2) -> None:
    """At most ``arenas`` malloc arenas (glibc's default is 8 per core): each thread that
    allocates otherwise gets an arena of its own, and freed memory stranded across them stays
    RSS. Call before the process starts threads. The operator with 10k bindings peaked some
    3 MiB lower with 2 (`benchmarks/load.py` under MALLOC_ARENA_MAX=2, which this sets from
    inside). Elsewhere than glibc, nothing."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_ARENA_MAX, arenas)
