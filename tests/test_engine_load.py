"""Load: 64 threads and 64 asyncio tasks at once, random sizes, repeated pairs, cache on.

Every result must equal the pair scored alone (within 1e-5), nothing may deadlock (every
wait has a timeout), the score cache must stay within its bounds, and releasing the
engines must leave no thread behind. Seconds, not minutes, on a 2-core CPU.
"""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import numpy as np
import pytest

from crag_integrations import get_engine, release_engines
from crag_integrations.testing import save_tiny_checkpoint
from crag_integrations.types import SequenceScores

Pair = tuple[str, str]

WORDS = (
    "rain",
    "water",
    "vapor",
    "atmosphere",
    "condenses",
    "droplets",
    "tower",
    "paris",
    "france",
    "encoder",
    "context",
    "sequence",
    "tokens",
    "query",
    "document",
    "relevance",
    "score",
    "light",
    "energy",
    "chemical",
    "glucose",
    "capital",
    "japan",
    "tokyo",
    "city",
    "retrieval",
    "passage",
    "language",
    "model",
    "answer",
    "reranker",
    "chunk",
    "climate",
)
CALLERS = 64


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("load") / "rerank", seed=77))


def _workload(seed: int) -> tuple[list[Pair], list[list[Pair]]]:
    """A pool of pairs (some longer than one window) and 2 x CALLERS calls drawn from it
    with repeats, so calls share pairs with each other and within themselves."""
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) + "?" for _ in range(12)]
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 90))) for _ in range(10)]
    pool = [(rng.choice(queries), rng.choice(texts)) for _ in range(90)]
    pool = list(dict.fromkeys(pool))
    calls = [rng.choices(pool, k=rng.randint(1, 12)) for _ in range(2 * CALLERS)]
    return pool, calls


def test_64_threads_and_64_tasks_get_exactly_their_own_results(model_path: str) -> None:
    """Threads and asyncio tasks hammer one cached engine at once; every result equals the
    pair scored alone, nobody hangs, the cache stays bounded, and release leaves no thread."""
    threads_before = {t.ident for t in threading.enumerate()}
    pool, calls = _workload(seed=3)
    alone = get_engine(model_path, max_length=48, cache_size=0)
    reference = {pair: alone.score_pairs([pair])[0] for pair in pool}
    assert any(r.num_windows > 1 for r in reference.values())

    engine = get_engine(model_path, max_length=48, max_wait_ms=2, cache_size=64, cache_bytes=60_000)
    engine.load()
    outcomes: list[Any] = [None] * len(calls)
    start = threading.Event()

    def thread_call(index: int) -> None:
        start.wait(30)
        try:
            outcomes[index] = engine.score_pairs(calls[index])
        except BaseException as exc:  # reported by the comparison below
            outcomes[index] = exc

    async def tasks() -> None:
        await asyncio.to_thread(start.wait, 30)

        async def one(index: int) -> None:
            try:
                outcomes[index] = await engine.ascore_pairs(calls[index])
            except BaseException as exc:  # reported by the comparison below
                outcomes[index] = exc

        await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(CALLERS, 2 * CALLERS))), timeout=120
        )

    loop_thread = threading.Thread(target=lambda: asyncio.run(tasks()))
    threads = [threading.Thread(target=thread_call, args=(i,)) for i in range(CALLERS)]
    for thread in [*threads, loop_thread]:
        thread.start()
    start.set()
    for thread in [*threads, loop_thread]:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a caller deadlocked"

    for call, outcome in zip(calls, outcomes, strict=True):
        assert isinstance(outcome, list), outcome
        assert len(outcome) == len(call)
        for pair, result in zip(call, outcome, strict=True):
            assert isinstance(result, SequenceScores)
            expected = reference[pair]
            assert result.num_windows == expected.num_windows
            np.testing.assert_allclose(result.window_logits, expected.window_logits, atol=1e-5)

    info = engine.cache_info()
    assert info.size <= info.capacity and info.bytes <= info.max_bytes
    assert info.size < len(pool)  # the byte bound evicted: memory stays bounded
    assert info.hits > 0  # repeated pairs were shared, not recomputed
    assert engine._runner.cache.in_flight == 0
    assert engine.queued == 0
    assert engine.drains < len(calls)  # concurrent calls shared drains

    release_engines()
    leaked = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
    assert leaked == []
