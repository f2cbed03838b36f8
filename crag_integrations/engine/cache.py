"""A bounded, thread-safe LRU cache of scored pairs, one per loaded model, with shared work.

Corrective-RAG loops score the same ``(query, text)`` pairs again and again (re-retrieval,
grading after reranking, retries). The engine keeps what it scored in a :class:`ScoreCache`
keyed by everything that decides the result besides the weights: the task, the effective
window length and stride, the query and the text. The cache lives with the loaded model,
so engines that share weights share the cache too. Cached values are the engine's frozen
result objects (:class:`~crag_integrations.types.SequenceScores`,
:class:`~crag_integrations.types.TokenScores`), so a hit returns exactly what the forward
pass produced.

Two bounds hold at once: a number of entries and an estimate of the bytes they keep alive
(:func:`estimate_bytes` of the key and the result); the least recently used entries go
first when either is exceeded. A result larger than the whole byte bound is not stored.

The cache also knows the pairs being computed right now (:class:`InFlight`): a caller that
misses a pair another caller is already computing waits for that computation instead of
running its own (:meth:`ScoreCache.claim`), so concurrent callers compute a new pair once.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["CacheInfo", "InFlight", "Joined", "ScoreCache", "estimate_bytes"]

_FLOAT_BYTES = sys.getsizeof(0.5)
_INT_BYTES = sys.getsizeof(2**20)
_EMPTY_TUPLE_BYTES = sys.getsizeof(())
_POINTER_BYTES = 8
#: A frozen, slotted dataclass instance without its fields' contents.
_OBJECT_BYTES = 48


def estimate_bytes(value: Any) -> int:
    """An estimate of the memory ``value`` keeps alive (CPython, 64-bit), in bytes.

    Exact for strings, numbers and tuples of them; rows of a tuple of rows (the logits of
    each window, the probabilities of each token) are assumed to be shaped like the first,
    so the cost is proportional to the number of rows, not of numbers. Dataclass results
    count their fields.
    """
    if isinstance(value, str):
        return sys.getsizeof(value)
    if isinstance(value, float):
        return _FLOAT_BYTES
    if isinstance(value, int):
        return _INT_BYTES
    if isinstance(value, tuple):
        size = _EMPTY_TUPLE_BYTES + _POINTER_BYTES * len(value)
        if not value:
            return size
        first = value[0]
        if isinstance(first, (int, float)):
            return size + len(value) * estimate_bytes(first)
        if isinstance(first, tuple) and (not first or isinstance(first[0], (int, float))):
            return size + len(value) * estimate_bytes(first)
        return size + sum(estimate_bytes(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _OBJECT_BYTES + sum(
            _POINTER_BYTES + estimate_bytes(getattr(value, f.name))
            for f in dataclasses.fields(value)
        )
    return sys.getsizeof(value)


class CacheInfo(NamedTuple):
    """Counters of a :class:`ScoreCache`, like ``functools.lru_cache``'s ``cache_info()``.

    Attributes:
        hits: Pairs answered from the cache (or from another caller's computation of the
            same pair that was under way).
        misses: Pairs that had to be scored by the model.
        size: Pairs held now.
        capacity: Most pairs held at once (``0``: the cache is off).
        bytes: Estimated bytes held now (keys and results; see :func:`estimate_bytes`).
        max_bytes: Most estimated bytes held at once (``0``: no byte bound).
    """

    hits: int
    misses: int
    size: int
    capacity: int
    bytes: int = 0
    max_bytes: int = 0


@dataclass(eq=False)
class InFlight:
    """Pairs one caller is having computed: its future's result has one outcome per key.

    Attributes:
        future: Resolves to one outcome per key of :attr:`keys`, in order: the result, or
            the exception that pair alone failed with.
        keys: The cache keys this computation claimed.
        waiters: Callers waiting for it (its owner and every caller that joined it); it is
            cancelled only when the last of them stops waiting.
    """

    future: Future[list[Any]] = field(default_factory=Future)
    keys: list[Hashable] = field(default_factory=list)
    waiters: int = 1


@dataclass(frozen=True)
class Joined:
    """A pair another caller is computing: outcome ``index`` of ``flight``."""

    flight: InFlight
    index: int


class ScoreCache:
    """Least-recently-used mapping from a pair's key to its frozen result.

    Args:
        capacity: Most entries held; the least recently used entry goes first. ``0``
            stores nothing.
        max_bytes: Most estimated bytes held (see :func:`estimate_bytes`); ``None``: no
            byte bound (and no byte accounting).

    Example:
        >>> cache = ScoreCache(capacity=2)
        >>> cache.put(("sequence", 512, 128, "q", "a"), "A")
        >>> cache.get(("sequence", 512, 128, "q", "a")), cache.get(("sequence", 512, 128, "q", "b"))
        ('A', None)
        >>> cache.info()
        CacheInfo(hits=1, misses=1, size=1, capacity=2, bytes=0, max_bytes=0)
    """

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, not {max_bytes}")
        self._capacity = capacity
        self._max_bytes = max_bytes
        #: key -> (result, its estimated bytes)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._flights: dict[Hashable, Joined] = {}
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def capacity(self) -> int:
        """Most entries held at once."""
        return self._capacity

    @property
    def max_bytes(self) -> int | None:
        """Most estimated bytes held at once (``None``: no byte bound)."""
        return self._max_bytes

    @property
    def in_flight(self) -> int:
        """Pairs being computed now that another caller could join."""
        return len(self._flights)

    def grow(self, capacity: int, max_bytes: int | None = None) -> None:
        """Raise the bounds to at least ``capacity`` entries and ``max_bytes`` (never lower)."""
        with self._lock:
            self._capacity = max(self._capacity, capacity)
            if max_bytes is not None:
                self._max_bytes = max(self._max_bytes or 0, max_bytes)

    def get(self, key: Hashable) -> Any | None:
        """The cached result for ``key`` (counted as a hit), or ``None`` (a miss)."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[Hashable]) -> list[Any | None]:
        """:meth:`get` for each key, under one lock acquisition."""
        with self._lock:
            return [self._lookup(key) for key in keys]

    def _lookup(self, key: Hashable) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return entry[0]

    def claim(self, keys: Sequence[Hashable]) -> tuple[list[Any], InFlight | None]:
        """Look each key up; join computations under way; claim the rest for a new flight.

        Returns, per key: the cached result; a :class:`Joined` when another caller is
        computing that pair now (this caller then waits for it and counts as one of its
        waiters); or ``None`` when the pair was appended to the returned flight's keys, so
        later callers join that flight until :meth:`settle` or :meth:`abandon`. The flight
        is ``None`` when nothing was claimed. All under one lock, so of two concurrent
        callers missing one pair exactly one computes it.
        """
        found: list[Any] = []
        flight: InFlight | None = None
        with self._lock:
            joined: set[int] = set()
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self._hits += 1
                    found.append(entry[0])
                    continue
                running = self._flights.get(key)
                if running is not None:
                    self._hits += 1
                    if running.flight is not flight and id(running.flight) not in joined:
                        joined.add(id(running.flight))
                        running.flight.waiters += 1
                    found.append(running)
                    continue
                self._misses += 1
                if flight is None:
                    flight = InFlight()  # only on a miss: a Future costs a Condition
                self._flights[key] = Joined(flight, len(flight.keys))
                flight.keys.append(key)
                found.append(None)
        return found, flight

    def settle(self, flight: InFlight) -> None:
        """Store what ``flight`` computed and stop others from joining it.

        Called when its future is done (a done callback); results are stored, failed
        pairs and cancelled or failed computations are forgotten.
        """
        outcomes: list[Any] | None = None
        if not flight.future.cancelled() and flight.future.exception() is None:
            outcomes = flight.future.result()
        with self._lock:
            self._release(flight)
            if outcomes is not None and self._capacity > 0:
                for key, outcome in zip(flight.keys, outcomes, strict=True):
                    if not isinstance(outcome, BaseException):
                        self._store(key, outcome)
                self._evict()

    def abandon(self, flights: Sequence[InFlight]) -> None:
        """One waiter of each of ``flights`` stopped waiting (cancelled or timed out).

        A computation nobody waits for any longer is cancelled if the owner thread has not
        started it; if it has, its results are still stored when it finishes.
        """
        orphans: list[InFlight] = []
        with self._lock:
            for flight in flights:
                flight.waiters -= 1
                if flight.waiters <= 0:
                    self._release(flight)
                    orphans.append(flight)
        for flight in orphans:  # outside the lock: cancel() runs settle() as a callback
            flight.future.cancel()

    def _release(self, flight: InFlight) -> None:
        for key in flight.keys:
            running = self._flights.get(key)
            if running is not None and running.flight is flight:
                del self._flights[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key``, evicting the least recently used beyond a bound."""
        self.put_many([(key, value)])

    def put_many(self, items: Sequence[tuple[Hashable, Any]]) -> None:
        """:meth:`put` for each item, under one lock acquisition."""
        with self._lock:
            if self._capacity == 0:
                return
            for key, value in items:
                self._store(key, value)
            self._evict()

    def _store(self, key: Hashable, value: Any) -> None:
        size = 0
        if self._max_bytes is not None:
            size = estimate_bytes(key) + estimate_bytes(value)
            if size > self._max_bytes:
                return  # larger than the whole bound: keeping it would evict everything
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= previous[1]
        self._entries[key] = (value, size)
        self._bytes += size

    def _evict(self) -> None:
        limit = self._max_bytes
        while len(self._entries) > self._capacity or (limit is not None and self._bytes > limit):
            _key, (_value, size) = self._entries.popitem(last=False)
            self._bytes -= size

    def clear(self) -> None:
        """Drop every entry and reset the counters (computations under way continue)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._hits = 0
            self._misses = 0

    def info(self) -> CacheInfo:
        """The current counters."""
        with self._lock:
            return CacheInfo(
                self._hits,
                self._misses,
                len(self._entries),
                self._capacity,
                self._bytes,
                self._max_bytes or 0,
            )
