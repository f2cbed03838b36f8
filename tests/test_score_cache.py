"""The score cache: repeated pairs cost no forward pass and return the same results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from crag_integrations import get_engine
from crag_integrations.engine.cache import CacheInfo, ScoreCache, estimate_bytes
from crag_integrations.testing import save_tiny_checkpoint

QUERY = "what causes rain?"
TEXTS = [
    "Rain forms when water vapor in the atmosphere condenses into droplets.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The capital of Japan is Tokyo, which is also its largest city.",
]


def test_lru_evicts_the_least_recently_used_entry_and_counts() -> None:
    """Beyond capacity the least recently used key goes; hits and misses are counted."""
    cache = ScoreCache(capacity=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None
    assert cache.get_many(["a", "c"]) == [1, 3]
    assert cache.info() == CacheInfo(hits=3, misses=1, size=2, capacity=2)
    cache.clear()
    assert cache.info() == CacheInfo(hits=0, misses=0, size=0, capacity=2)


def test_zero_capacity_stores_nothing_and_grow_only_raises() -> None:
    """Capacity 0 keeps nothing; grow() raises the capacity and never lowers it."""
    cache = ScoreCache(capacity=0)
    cache.put("a", 1)
    assert cache.get("a") is None
    cache.grow(3)
    cache.grow(1)
    assert cache.capacity == 3
    with pytest.raises(ValueError, match=">= 0"):
        ScoreCache(capacity=-1)


def test_repeated_pairs_cost_no_forward_pass_and_return_identical_results(
    reranker_path: str,
) -> None:
    """A second identical call is answered from the cache with equal results."""
    engine = get_engine(reranker_path, max_length=128)
    engine.clear_cache()
    pairs = [(QUERY, t) for t in TEXTS]
    first = engine.score_pairs(pairs)
    passes = engine.forward_passes
    again = engine.score_pairs(pairs)
    assert engine.forward_passes == passes
    assert again == first
    info = engine.cache_info()
    assert (info.hits, info.misses, info.size) == (4, 4, 4)


def test_cached_results_equal_a_fresh_computation(reranker_path: str) -> None:
    """What the cache returns equals what an uncached engine computes for the same call."""
    cached = get_engine(reranker_path, max_length=96)
    fresh = get_engine(reranker_path, max_length=96, cache_size=0)
    pairs = [(QUERY, t) for t in TEXTS]
    cached.score_pairs(pairs)
    assert cached.score_pairs(pairs) == fresh.score_pairs(pairs)
    assert fresh.cache_info().hits == cached.cache_info().hits  # shared cache, fresh skips it


def test_partial_hits_compute_only_the_new_pairs_in_input_order(reranker_path: str) -> None:
    """Known pairs come from the cache, new ones from the model, all in input order."""
    engine = get_engine(reranker_path, max_length=80)
    engine.clear_cache()
    reference = get_engine(reranker_path, max_length=80, cache_size=0)
    engine.score_pairs([(QUERY, TEXTS[0]), (QUERY, TEXTS[1])])
    mixed = [(QUERY, TEXTS[2]), (QUERY, TEXTS[1]), (QUERY, TEXTS[2]), (QUERY, TEXTS[0])]
    got = engine.score_pairs(mixed)
    expected = reference.score_pairs(mixed)
    np.testing.assert_allclose(
        [g.window_logits for g in got], [e.window_logits for e in expected], atol=1e-5
    )
    assert got[0] is got[2]  # a duplicate within one call is scored once
    assert engine.cache_info().size == 3


def test_windowing_parameters_and_tasks_are_part_of_the_key(reranker_path: str) -> None:
    """A different max_length or stride is a miss, never a wrong hit."""
    engine = get_engine(reranker_path, max_length=64)
    engine.clear_cache()
    pairs = [(QUERY, TEXTS[0] * 8)]
    short = engine.score_pairs(pairs)
    longer = engine.score_pairs(pairs, max_length=128)
    strided = engine.score_pairs(pairs, stride=8)
    assert engine.cache_info().hits == 0
    assert short[0].num_windows > longer[0].num_windows
    assert strided[0].num_windows < short[0].num_windows  # less overlap, fewer windows


def test_the_cache_stays_within_its_bound(checkpoints: dict[str, Path]) -> None:
    """No more than cache_size pairs are held, however many are scored; the latest stay."""
    engine = get_engine(str(checkpoints["bert-osmosis"]), cache_size=3)
    pairs = [(f"query {i}", t) for i in range(3) for t in TEXTS]
    engine.score_pairs(pairs)
    assert engine.cache_info().size == engine.cache_info().capacity == 3
    passes = engine.forward_passes
    engine.score_pairs(pairs[-3:])
    assert engine.forward_passes == passes


def test_cache_size_zero_disables_reads_and_writes(reranker_path: str) -> None:
    """With cache_size=0 every call runs the model."""
    engine = get_engine(reranker_path, max_length=88, cache_size=0)
    pairs = [(QUERY, TEXTS[0])]
    engine.score_pairs(pairs)
    passes = engine.forward_passes
    engine.score_pairs(pairs)
    assert engine.forward_passes == passes + 1


def test_token_scores_and_async_calls_use_the_cache(highlighter_path: str) -> None:
    """Token results are cached too, and the async verbs read the same cache."""
    engine = get_engine(highlighter_path)
    engine.clear_cache()
    pairs = [(QUERY, TEXTS[0]), (QUERY, TEXTS[3])]
    first = engine.token_scores(pairs)
    passes = engine.forward_passes
    again = asyncio.run(engine.atoken_scores(pairs))
    assert again == first
    assert engine.forward_passes == passes


def test_failed_requests_are_not_cached(reranker_path: str) -> None:
    """A pair that raised is scored (and raises) again, never answered from the cache."""
    engine = get_engine(reranker_path, max_length=32)
    engine.clear_cache()
    pairs = [("rain " * 100, TEXTS[0])]
    for _ in range(2):
        with pytest.raises(ValueError, match="Shorten the query"):
            engine.score_pairs(pairs)
    assert engine.cache_info().size == 0


# --------------------------------------------------------------------------------------
# The byte bound


def _deep_size(value: object, seen: set[int] | None = None) -> int:
    """Bytes ``value`` keeps alive, counted object by object (each object once)."""
    import dataclasses
    import sys

    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, tuple):
        size += sum(_deep_size(item, seen) for item in value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        size += sum(_deep_size(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    return size


def test_the_byte_estimate_is_close_to_what_results_keep_alive(
    reranker_path: str, highlighter_path: str
) -> None:
    """estimate_bytes of real results is within a factor of two of their measured size (it
    may count rows shared by two fields twice: an upper estimate)."""
    long_text = " ".join(TEXTS) * 6
    sequence = get_engine(reranker_path, max_length=64, cache_size=0).score_pairs(
        [(QUERY, long_text)]
    )[0]
    tokens = get_engine(highlighter_path, max_length=64, cache_size=0).token_scores(
        [(QUERY, long_text)]
    )[0]
    for value in (sequence, tokens, long_text, ("sequence", 64, 128, QUERY, long_text)):
        measured = _deep_size(value)
        assert measured / 2 <= estimate_bytes(value) <= measured * 2, (type(value), measured)


def test_the_byte_bound_evicts_least_recently_used_entries() -> None:
    """Beyond max_bytes the oldest entries go; an entry larger than the bound is not kept."""
    each = estimate_bytes(("k", 0)) + estimate_bytes("v" * 100)
    cache = ScoreCache(capacity=100, max_bytes=3 * each)
    for index in range(5):
        cache.put(("k", index), "v" * 100)
    info = cache.info()
    assert (info.size, info.bytes, info.max_bytes) == (3, 3 * each, 3 * each)
    assert cache.get(("k", 0)) is None and cache.get(("k", 4)) == "v" * 100
    cache.put(("k", 9), "v" * 10_000)  # alone above the bound
    assert cache.get(("k", 9)) is None and cache.info().size == 3
    cache.grow(100, max_bytes=1)  # never lowers
    assert cache.max_bytes == 3 * each


def test_the_engines_cache_stays_within_its_configured_bytes(tmp_path: Path) -> None:
    """cache_bytes bounds what a model's cache holds and is shown in cache_info()."""
    # A model of its own: a shared cache's bounds are the largest of its engines'.
    path = str(save_tiny_checkpoint(tmp_path / "bytes", seed=8))
    bound = 40_000
    engine = get_engine(path, max_length=72, cache_size=10_000, cache_bytes=bound)
    pairs = [(f"query {i}", text * 3) for i in range(40) for text in TEXTS]
    engine.score_pairs(pairs)
    info = engine.cache_info()
    assert (info.capacity, info.max_bytes) == (10_000, bound)
    assert 0 < info.bytes <= bound
    assert info.size < len(pairs)  # evicted by bytes, far below the entry bound
    assert get_engine(path, max_length=72, cache_bytes=bound * 2).cache_info().max_bytes == (
        bound * 2
    )


def test_cache_bytes_zero_disables_the_cache_and_negative_is_refused(reranker_path: str) -> None:
    """cache_bytes=0 reads and writes nothing, like cache_size=0."""
    from crag_integrations import EngineConfig

    engine = get_engine(reranker_path, max_length=90, cache_bytes=0)
    engine.score_pairs([(QUERY, TEXTS[1])])
    passes = engine.forward_passes
    engine.score_pairs([(QUERY, TEXTS[1])])
    assert engine.forward_passes == passes + 1
    with pytest.raises(ValueError, match="cache_bytes"):
        EngineConfig(model="m", cache_bytes=-1)
