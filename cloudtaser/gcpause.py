"""Pausing the cyclic garbage collector around a bulk compile (process state, so not in the
pure engine: its callers, the operator's reconcile and benchmarks/compile.py, pause it).

A full compile allocates a few objects per pod and binding, none of them cyclic; with 10k
bindings the collector rescanned the growing young generations so often that the compile took
3x longer (benchmarks/compile.py). Reference counting still frees everything.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block; it resumes (if it was on) when the
    block ends, however it ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
