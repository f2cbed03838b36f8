"""Many queries, one engine drain: a role's async verb per distinct query, all in flight.

Roles take one query and its texts per call. Callers holding ``(query, text)`` pairs of many
queries (checkpoint evaluation, corpus scoring, LangChain's ``BaseCrossEncoder``) group the
pairs by query and submit every group at once, so the engine's owner thread drains them into
shared, length-packed batches as if they had come in one request; results come back in pair
order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["aper_query", "per_query", "run_coroutine"]

T = TypeVar("T")
R = TypeVar("R")

Verb = Callable[[str, list[str]], Awaitable[Sequence[T]]]


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, R]]) -> R:
    """Run a coroutine to completion from synchronous code, even inside a running loop.

    Example:
        >>> async def two() -> int:
        ...     return 2
        >>> run_coroutine(two)
        2
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    # Called from a running loop (a notebook cell, an async app): asyncio.run refuses to
    # nest, so the coroutine gets its own loop on a helper thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def aper_query(
    pairs: Sequence[tuple[str, str]], verb: Verb[T], *, in_flight: int | None = None
) -> list[T]:
    """``verb(query, texts)`` once per distinct query of ``pairs``, all in flight at once (at
    most ``in_flight``, e.g. the engine's queue bound); one result per pair, in pair order.

    Example:
        >>> async def lengths(query: str, texts: list[str]) -> list[int]:
        ...     return [len(query) + len(t) for t in texts]
        >>> asyncio.run(aper_query([("a", "xy"), ("bb", "z"), ("a", "")], lengths))
        [3, 3, 1]
    """
    groups: dict[str, list[int]] = {}
    for index, (query, _text) in enumerate(pairs):
        groups.setdefault(query, []).append(index)
    slots = asyncio.Semaphore(in_flight or max(1, len(groups)))

    async def one(query: str, indices: list[int]) -> Sequence[T]:
        async with slots:
            return await verb(query, [pairs[i][1] for i in indices])

    outputs = await asyncio.gather(*(one(q, ix) for q, ix in groups.items()))
    results: dict[int, T] = {}
    for indices, values in zip(groups.values(), outputs, strict=True):
        results.update(zip(indices, values, strict=True))
    return [results[index] for index in range(len(pairs))]


def per_query(
    pairs: Sequence[tuple[str, str]], verb: Verb[T], *, in_flight: int | None = None
) -> list[T]:
    """Synchronous :func:`aper_query` (works inside a running event loop too)."""
    return run_coroutine(lambda: aper_query(pairs, verb, in_flight=in_flight))
