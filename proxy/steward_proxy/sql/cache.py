"""``ShapeCache``: a bounded LRU from statement shape (normalized text) to its analysis.

A hot query arrives with different literals each time but the same normalized
text, so after the first parse its analysis is one dict lookup away. The bound
is on entries and on key length, so a sidecar's memory stays predictable even
when a client sends endless distinct shapes or huge generated statements.

Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["ShapeCache"]

V = TypeVar("V")


class ShapeCache(Generic[V]):
    """Least-recently-used mapping with at most ``maxsize`` entries.

    Keys longer than ``max_key_chars`` are never stored (they are analysed each
    time). ``hits`` and ``misses`` count :meth:`get` outcomes, for metrics.
    """

    __slots__ = ("_data", "hits", "max_key_chars", "maxsize", "misses")

    def __init__(self, maxsize: int = 2048, *, max_key_chars: int = 8192) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self._data: OrderedDict[str, V] = OrderedDict()
        self.maxsize = maxsize
        self.max_key_chars = max_key_chars
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> V | None:
        """Return the cached value for ``key`` (marking it recently used) or ``None``."""
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: V) -> None:
        """Store ``value`` under ``key``, evicting the least recently used entries."""
        if self.maxsize == 0 or len(key) > self.max_key_chars:
            return
        data = self._data
        data[key] = value
        data.move_to_end(key)
        while len(data) > self.maxsize:
            data.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._data.clear()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
