"""A map that keeps its values in key order, so the Plan's lists need no sort per change.

The incremental compiler changes one binding or pod at a time; the Plan lists every binding,
pod and problem in key order. Re-sorting 10k items per change would make ``plan()`` cost a
sort; an ``OrderedMap`` instead sorts once after a bulk load and then keeps its key and value
lists in order by bisection, so a change costs O(log n) plus a memmove and ``values()`` is a
list copy.
"""

from __future__ import annotations

import bisect
from typing import Any, Generic, Protocol, TypeVar


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Ordered)
V = TypeVar("V")


class OrderedMap(Generic[K, V]):
    """A dict whose values() come in key order."""

    __slots__ = ("_items", "_keys", "_values")

    def __init__(self) -> None:
        self._items: dict[K, V] = {}
        # Both None while unsorted (after unsort(), for a bulk load); rebuilt by values().
        self._keys: list[K] | None = []
        self._values: list[V] | None = []

    def put(self, key: K, value: V) -> None:
        keys, values = self._keys, self._values
        if keys is not None and values is not None:
            if key in self._items:
                values[bisect.bisect_left(keys, key)] = value
            elif not keys or keys[-1] < key:
                keys.append(key)
                values.append(value)
            else:
                at = bisect.bisect_left(keys, key)
                keys.insert(at, key)
                values.insert(at, value)
        self._items[key] = value

    def pop(self, key: K) -> V | None:
        if key not in self._items:
            return None
        value = self._items.pop(key)
        keys, values = self._keys, self._values
        if keys is not None and values is not None:
            at = bisect.bisect_left(keys, key)
            del keys[at]
            del values[at]
        return value

    def unsort(self) -> None:
        """Stop keeping the order during a bulk load; the next values() sorts once."""
        self._keys = self._values = None

    def keys(self) -> list[K]:
        """The keys in order (a new list)."""
        self._sort()
        assert self._keys is not None
        return list(self._keys)

    def values(self) -> list[V]:
        """The values in key order (a new list)."""
        self._sort()
        assert self._values is not None
        return list(self._values)

    def _sort(self) -> None:
        if self._keys is None or self._values is None:
            self._keys = sorted(self._items)
            self._values = [self._items[k] for k in self._keys]
