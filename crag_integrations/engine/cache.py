"""A bounded, thread-safe LRU cache of scored pairs, one per loaded model.

Corrective-RAG loops score the same ``(query, text)`` pairs again and again (re-retrieval,
grading after reranking, retries). The engine keeps what it scored in a :class:`ScoreCache`
keyed by everything that decides the result besides the weights: the task, the effective
window length and stride, the query and the text. The cache lives with the loaded model,
so engines that share weights share the cache too. Cached values are the engine's frozen
result objects (:class:`~crag_integrations.types.SequenceScores`,
:class:`~crag_integrations.types.TokenScores`), so a hit returns exactly what the forward
pass produced.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, NamedTuple

__all__ = ["CacheInfo", "ScoreCache"]


class CacheInfo(NamedTuple):
    """Counters of a :class:`ScoreCache`, like ``functools.lru_cache``'s ``cache_info()``.

    Attributes:
        hits: Pairs answered from the cache.
        misses: Pairs that had to be scored by the model.
        size: Pairs held now.
        capacity: Most pairs held at once (``0``: the cache is off).
    """

    hits: int
    misses: int
    size: int
    capacity: int


class ScoreCache:
    """Least-recently-used mapping from a pair's key to its frozen result.

    Args:
        capacity: Most entries held; the least recently used entry goes first. ``0``
            stores nothing.

    Example:
        >>> cache = ScoreCache(capacity=2)
        >>> cache.put(("sequence", 512, 128, "q", "a"), "A")
        >>> cache.get(("sequence", 512, 128, "q", "a")), cache.get(("sequence", 512, 128, "q", "b"))
        ('A', None)
        >>> cache.info()
        CacheInfo(hits=1, misses=1, size=1, capacity=2)
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        self._capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def capacity(self) -> int:
        """Most entries held at once."""
        return self._capacity

    def grow(self, capacity: int) -> None:
        """Raise the capacity to at least ``capacity`` (it never shrinks)."""
        with self._lock:
            self._capacity = max(self._capacity, capacity)

    def get(self, key: Hashable) -> Any | None:
        """The cached result for ``key`` (counted as a hit), or ``None`` (a miss)."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return value

    def get_many(self, keys: list[Hashable]) -> list[Any | None]:
        """:meth:`get` for each key, under one lock acquisition."""
        with self._lock:
            found: list[Any | None] = []
            for key in keys:
                value = self._entries.get(key)
                if value is None:
                    self._misses += 1
                else:
                    self._entries.move_to_end(key)
                    self._hits += 1
                found.append(value)
            return found

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key``, evicting the least recently used beyond capacity."""
        self.put_many([(key, value)])

    def put_many(self, items: list[tuple[Hashable, Any]]) -> None:
        """:meth:`put` for each item, under one lock acquisition."""
        with self._lock:
            if self._capacity == 0:
                return
            for key, value in items:
                self._entries[key] = value
                self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._hits = 0
            self._misses = 0

    def info(self) -> CacheInfo:
        """The current counters."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._entries), self._capacity)
