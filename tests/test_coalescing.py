"""Concurrent callers share forward passes and still each get exactly their own results."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crag_integrations import get_engine, release_engines
from crag_integrations.engine.requests import Request
from crag_integrations.types import SequenceScores, TokenScores

TOPICS = (
    "rain",
    "the Eiffel Tower",
    "ModernBERT",
    "photosynthesis",
    "Tokyo",
    "cross-encoders",
    "mitochondria",
    "climate change",
)
TEXTS = (
    "Rain forms when water vapor in the atmosphere condenses into droplets.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "ModernBERT is a long-context encoder for NLP. " * 3,
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The capital of Japan is Tokyo, which is also its largest city.",
    "A reranker sorts retrieved chunks so that the most relevant ones come first.",
)


def _request_pairs(index: int) -> list[tuple[str, str]]:
    """A distinct query per caller, with a caller-specific subset and order of texts."""
    query = f"what about {TOPICS[index % len(TOPICS)]} number {index}?"
    texts = [TEXTS[(index + k) % len(TEXTS)] for k in range(1 + index % len(TEXTS))]
    return [(query, text) for text in texts]


def _logits(results: list[SequenceScores]) -> list[list[float]]:
    return [list(r.window_logits[0]) for r in results]


def _estimate(pairs: list[tuple[str, str]]) -> int:
    return Request("sequence", pairs, None, 0, 1).estimated_tokens


def _references(path: str, requests: list[list[tuple[str, str]]]) -> list[Any]:
    """Each request scored alone, one drain at a time, without the cache."""
    alone = get_engine(path, max_wait_ms=0, cache_size=0, token_budget=4096)
    return [alone.score_pairs(pairs) for pairs in requests]


def test_sixteen_threads_coalesce_into_one_drain_and_get_their_own_results(
    reranker_path: str,
) -> None:
    """16 threads with different queries share one drain; each gets its single-call result."""
    requests = [_request_pairs(i) for i in range(16)]
    expected = _references(reranker_path, requests)
    # The owner waits (up to 30 s) until the estimated tokens of all 16 requests arrived.
    engine = get_engine(
        reranker_path,
        max_wait_ms=30_000,
        cache_size=0,
        token_budget=sum(_estimate(p) for p in requests),
    )
    engine.load()
    drains_before = engine.drains
    barrier = threading.Barrier(16)
    got: list[Any] = [None] * 16

    def call(i: int) -> None:
        barrier.wait()
        got[i] = engine.score_pairs(requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert engine.drains - drains_before == 1
    for mine, reference in zip(got, expected, strict=True):
        assert len(mine) == len(reference)
        np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)


def test_sixteen_asyncio_tasks_coalesce_and_get_their_own_results(reranker_path: str) -> None:
    """16 tasks on one event loop share one drain; each gets its single-call result."""
    requests = [_request_pairs(i + 3) for i in range(16)]
    expected = _references(reranker_path, requests)
    engine = get_engine(
        reranker_path,
        max_wait_ms=30_000,
        cache_size=0,
        token_budget=sum(_estimate(p) for p in requests),
    )
    engine.load()
    drains_before = engine.drains

    async def main() -> list[list[SequenceScores]]:
        return list(await asyncio.gather(*(engine.ascore_pairs(p) for p in requests)))

    got = asyncio.run(main())
    assert engine.drains - drains_before == 1
    for mine, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)


def test_token_requests_from_many_threads_keep_their_own_offsets(highlighter_path: str) -> None:
    """Token scores coalesced across threads map onto each caller's own text."""
    requests = [[(f"query {i}", TEXTS[i % len(TEXTS)] * (1 + i % 3))] for i in range(16)]
    alone = get_engine(highlighter_path, max_wait_ms=0, cache_size=0)
    expected = [alone.token_scores(p) for p in requests]
    engine = get_engine(highlighter_path, max_wait_ms=200, cache_size=0)
    got: list[list[TokenScores]] = [[] for _ in requests]
    barrier = threading.Barrier(len(requests))

    def call(i: int) -> None:
        barrier.wait()
        got[i] = engine.token_scores(requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for mine, reference in zip(got, expected, strict=True):
        assert mine[0].offsets == reference[0].offsets
        np.testing.assert_allclose(mine[0].probabilities, reference[0].probabilities, atol=1e-5)


def test_a_failing_request_fails_alone_while_others_in_the_same_drain_succeed(
    reranker_path: str,
) -> None:
    """A query too long for max_length raises for its caller only; the others get results."""
    requests = [_request_pairs(i) for i in range(8)]
    expected = _references(reranker_path, [[(q, t) for q, t in p] for p in requests])
    bad = [("rain " * 1000, "Rain forms when water vapor condenses.")]
    engine = get_engine(reranker_path, max_wait_ms=1000, cache_size=0)
    engine.load()
    barrier = threading.Barrier(len(requests) + 1)
    got: list[Any] = [None] * (len(requests) + 1)

    def call(i: int, pairs: list[tuple[str, str]]) -> None:
        barrier.wait()
        try:
            got[i] = engine.score_pairs(pairs)
        except Exception as exc:
            got[i] = exc

    threads = [threading.Thread(target=call, args=(i, p)) for i, p in enumerate(requests)]
    threads.append(threading.Thread(target=call, args=(len(requests), bad)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert isinstance(got[-1], ValueError)
    assert "Shorten the query" in str(got[-1])
    for mine, reference in zip(got[:-1], expected, strict=True):
        np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)


def test_a_forward_error_reaches_only_the_callers_in_the_failing_batch(
    reranker_path: str,
) -> None:
    """A call asking for windows longer than the model's positions fails alone.

    Such a max_length is now refused before any forward pass (see test_engine.py); forward
    passes that fail on the device are injected in test_engine_faults.py.
    """
    engine = get_engine(reranker_path, max_wait_ms=1000, cache_size=0, token_budget=600)
    engine.load()
    good = [_request_pairs(i) for i in range(6)]
    expected = _references(reranker_path, good)
    # max_length=1024 on a 512-position model: the long window cannot run; it sorts first
    # and fills a batch of its own under a 600-token budget.
    too_long = [("rain", "water vapor condenses into droplets " * 150)]
    barrier = threading.Barrier(len(good) + 1)
    got: list[Any] = [None] * (len(good) + 1)

    def call(i: int, pairs: list[tuple[str, str]], max_length: int | None) -> None:
        barrier.wait()
        try:
            got[i] = engine.score_pairs(pairs, max_length=max_length)
        except Exception as exc:
            got[i] = exc

    threads = [threading.Thread(target=call, args=(i, p, None)) for i, p in enumerate(good)]
    threads.append(threading.Thread(target=call, args=(len(good), too_long, 1024)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert isinstance(got[-1], Exception)
    for mine, reference in zip(got[:-1], expected, strict=True):
        np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)
    # The engine keeps serving after the failure.
    np.testing.assert_allclose(_logits(engine.score_pairs(good[0])), _logits(expected[0]))


def test_cancelled_async_callers_do_not_stall_the_others(reranker_path: str) -> None:
    """Tasks cancelled while queued are skipped; the remaining tasks get correct results."""
    requests = [_request_pairs(i) for i in range(16)]
    expected = _references(reranker_path, requests)
    engine = get_engine(reranker_path, max_wait_ms=300, cache_size=0, token_budget=10**9)
    engine.load()

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(engine.ascore_pairs(p)) for p in requests]
        await asyncio.sleep(0.05)  # every task has queued its request; the owner waits
        for task in tasks[::2]:
            task.cancel()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    got = asyncio.run(main())
    for index, (mine, reference) in enumerate(zip(got, expected, strict=True)):
        if index % 2 == 0:
            assert isinstance(mine, asyncio.CancelledError)
        else:
            np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)
    np.testing.assert_allclose(_logits(engine.score_pairs(requests[0])), _logits(expected[0]))


def test_a_cancelled_concurrent_future_is_skipped(reranker_path: str) -> None:
    """A request whose future is cancelled before the owner takes it is never run."""
    engine = get_engine(reranker_path, max_wait_ms=0, cache_size=0)
    engine.load()
    runner = engine._runner
    request = Request("sequence", _request_pairs(1), 128, 0, 4096)
    request.future.cancel()
    runner.submit(request)
    # A later request is served; the cancelled one never produced a result.
    assert len(engine.score_pairs(_request_pairs(2))) == len(_request_pairs(2))
    assert request.future.cancelled()


def test_the_queue_bound_holds_and_async_callers_do_not_block_the_loop(
    reranker_path: str,
) -> None:
    """With max_queue=2, at most 2 requests wait; the loop keeps running while others wait."""
    requests = [_request_pairs(i) for i in range(10)]
    expected = _references(reranker_path, requests)
    engine = get_engine(
        reranker_path, max_wait_ms=100, max_queue=2, cache_size=0, token_budget=10**9
    )
    engine.load()
    seen: list[int] = []

    async def main() -> list[Any]:
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                seen.append(engine.queued)
                await asyncio.sleep(0.002)

        watcher = asyncio.ensure_future(watch())
        results = await asyncio.gather(*(engine.ascore_pairs(p) for p in requests))
        done.set()
        await watcher
        return list(results)

    got = asyncio.run(main())
    assert max(seen) <= 2
    assert len(seen) > 1  # the watcher ran while callers waited for a slot
    for mine, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)


def test_sync_callers_block_on_a_full_queue_and_all_finish(reranker_path: str) -> None:
    """Sync callers beyond max_queue wait for a slot and still get their own results."""
    requests = [_request_pairs(i) for i in range(6)]
    expected = _references(reranker_path, requests)
    engine = get_engine(reranker_path, max_wait_ms=50, max_queue=1, cache_size=0)
    engine.load()
    got: list[Any] = [None] * len(requests)

    def call(i: int) -> None:
        got[i] = engine.score_pairs(requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for mine, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)


def test_release_answers_every_waiting_caller(reranker_path: str) -> None:
    """Releasing engines with requests in flight ends with a result or a clear error each."""
    engine = get_engine(reranker_path, max_wait_ms=200, cache_size=0, token_budget=10**9)
    engine.load()
    outcomes: list[Any] = [None] * 8

    def call(i: int) -> None:
        try:
            outcomes[i] = engine.score_pairs(_request_pairs(i))
        except RuntimeError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    release_engines()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    for outcome in outcomes:
        assert isinstance(outcome, (list, RuntimeError))
    with pytest.raises(RuntimeError, match="released"):
        engine.score_pairs(_request_pairs(0))


def test_padding_ceiling_matches_hand_computed_flops(repo_script: Callable[[str], Any]) -> None:
    """Peers pad each char-sorted batch to its longest pair; the engine packs by budget."""
    bench = repo_script("benchmarks/run.py")
    # flops(L) = 2 * L with linear_params=1 and no attention term.
    sizes = {"linear_params": 1, "layers": 0, "hidden": 0}
    call = [(10, 10), (100, 100)]  # (characters, tokens)
    # Peer: one batch of two padded to 100 -> 400. Exact: 20 + 200 = 220.
    tight = bench.padding_ceiling([call], st_batch_size=2, token_budget=150, **sizes)
    assert tight["st_vs_exact_flops"] == pytest.approx(400 / 220)
    assert tight["engine_vs_exact_flops"] == pytest.approx(1.0)  # 2 x 100 > 150: two batches
    assert tight["st_vs_engine_flops"] == pytest.approx(400 / 220)
    loose = bench.padding_ceiling([call], st_batch_size=2, token_budget=200, **sizes)
    assert loose["engine_vs_exact_flops"] == pytest.approx(400 / 220)  # one batch, padded
    assert loose["st_vs_engine_flops"] == pytest.approx(1.0)
    # The peer sorts by characters, not tokens: a short-in-characters, long-in-tokens pair
    # lands in the second batch and pads nothing else.
    odd = [(500, 50), (400, 40), (1, 90)]
    peer = bench.padding_ceiling([odd], st_batch_size=2, token_budget=10_000, **sizes)
    assert peer["st_vs_exact_flops"] == pytest.approx((2 * 100 + 180) / 360)
    # On CUDA the engine pads to its length buckets (multiples of 64): 10 and 100 -> 64, 128.
    gpu = bench.padding_ceiling([call], st_batch_size=2, token_budget=150, bucketed=True, **sizes)
    assert gpu["engine_vs_exact_flops"] == pytest.approx((2 * 64 + 2 * 128) / 220)
    # Attention grows with the square of the padded length.
    assert bench.sequence_flops(10, linear_params=0, layers=2, hidden=3) == 4 * 2 * 3 * 100


def test_engine_token_budget_reports_the_budget_in_effect(checkpoints: dict[str, Path]) -> None:
    path = str(checkpoints["bert-rerank"])
    assert get_engine(path, device="cpu").token_budget == 2048  # the CPU default
    assert get_engine(path, device="cpu", token_budget=512).token_budget == 512


def test_benchmark_smoke_runs_every_peer_on_a_tiny_model(
    tmp_path: Path, repo_script: Callable[[str], Any]
) -> None:
    """The benchmark's code path runs end to end (tiny model, tiny workload) and reports."""
    module = repo_script("benchmarks/run.py")
    report = module.main(["--smoke", "--out", str(tmp_path / "bench.json")])
    assert (tmp_path / "bench.json").exists()
    names = {row["system"] for row in report["throughput"]}
    assert {"engine", "st-per-query", "langchain", "llamaindex"} <= names
    assert all(row["pairs_per_s"] > 0 for row in report["throughput"])
    assert report["cache"]["hit_speedup"] > 1
    assert report["padding_ceiling"]["tiny"]["st_vs_exact_flops"] >= 1.0


def test_load_benchmark_smoke_runs_both_systems_at_every_concurrency(
    tmp_path: Path, repo_script: Callable[[str], Any]
) -> None:
    """benchmarks/load.py runs end to end on a tiny model and reports every row."""
    module = repo_script("benchmarks/load.py")
    report = module.main(["--smoke", "--out", str(tmp_path / "load.json")])
    assert (tmp_path / "load.json").exists()
    rows = {(row["callers"], row["system"]) for row in report["rows"]}
    assert rows == {(c, s) for c in (1, 4) for s in ("engine", "st-per-request")}
    assert all(row["pairs_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] for row in report["rows"])
