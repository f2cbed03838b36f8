"""Fault injection: whatever fails, exactly the callers it belongs to fail; all others get
correct results.

The faults are injected below the engine, where they come from in production: text the
tokenizer cannot read, and a device that fails (a poisoned input, an out-of-memory error
above some batch size, a stall). The device is simulated by wrapping the loaded model's
``forward``; the engine code under test runs unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from crag_integrations import get_engine, release_engines
from crag_integrations.engine.batching import encode_requests
from crag_integrations.engine.cross_encoder_engine import CrossEncoderEngine
from crag_integrations.engine.requests import Request
from crag_integrations.engine.runner import BUDGET_RECOVERY_BATCHES
from crag_integrations.testing import save_tiny_checkpoint
from crag_integrations.types import SequenceScores

Pair = tuple[str, str]

TEXTS = (
    "Rain forms when water vapor in the atmosphere condenses into droplets.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The capital of Japan is Tokyo, which is also its largest city.",
    "A reranker sorts retrieved chunks so that the most relevant ones come first.",
    "ModernBERT is a long-context encoder for NLP.",
)
#: Not in the tiny tokenizer's alphabet: tokenizes to [UNK], which the simulated device
#: refuses (as a real one refuses, say, an out-of-range index).
POISON = "\u2622 reactor core"
SURROGATE = "x \ud800 y"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny BERT reranker of this module's own, so injected faults touch nobody else."""
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("faults") / "rerank", seed=41))


def _pairs(index: int) -> list[Pair]:
    query = f"question number {index} about rain"
    return [(query, TEXTS[(index + k) % len(TEXTS)]) for k in range(1 + index % 4)]


def _logits(results: list[SequenceScores]) -> list[tuple[float, ...]]:
    return [r.window_logits[0] for r in results]


def _reference(path: str, calls: list[list[Pair]]) -> list[list[SequenceScores]]:
    """Each call alone, uncached: what every caller must get whatever else happens."""
    alone = get_engine(path, cache_size=0, max_wait_ms=0)
    return [alone.score_pairs(pairs) for pairs in calls]


class Device:
    """The accelerator under one loaded model, with faults switched on by the test.

    Attributes:
        gate: While set to an unset event, every forward pass waits for it (a stall).
        max_rows: Batches with more rows raise ``torch.OutOfMemoryError``.
        poison: Batches holding this token id raise ``RuntimeError``.
        rows: Rows of every forward pass that ran to completion.
    """

    def __init__(self, engine: CrossEncoderEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        model = engine._runner.loaded.model
        self._original = model.forward
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.max_rows: int | None = None
        self.poison: int | None = None
        self.rows: list[int] = []
        monkeypatch.setattr(model, "forward", self._forward)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        input_ids = kwargs["input_ids"]
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        if self.max_rows is not None and input_ids.shape[0] > self.max_rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {input_ids.shape[0]})")
        if self.poison is not None and bool((input_ids == self.poison).any()):
            raise RuntimeError("device-side assert triggered (simulated)")
        output = self._original(*args, **kwargs)
        self.rows.append(int(input_ids.shape[0]))
        return output


@pytest.fixture
def released() -> Iterator[None]:
    """Every engine released after the test (faulty devices do not outlive it)."""
    yield
    release_engines()


# ------------------------------------------------------------------------------ encoding


def test_a_lone_surrogate_fails_only_its_own_async_caller(model_path: str) -> None:
    """15 asyncio tasks share drains; the one with a lone surrogate gets a ValueError that
    names the pair and the character, the 14 others their single-call results."""
    calls = [_pairs(i) for i in range(15)]
    expected = _reference(model_path, calls)
    calls[7] = [calls[7][0], (calls[7][0][0], SURROGATE)]
    engine = get_engine(model_path, max_wait_ms=200, cache_size=0, token_budget=10**9)
    engine.load()

    async def main() -> list[Any]:
        return list(
            await asyncio.gather(*(engine.ascore_pairs(p) for p in calls), return_exceptions=True)
        )

    got = asyncio.run(main())
    error = got[7]
    assert isinstance(error, ValueError)
    assert "pairs[1]" in str(error) and "the text has a lone surrogate" in str(error)
    assert "U+D800" in str(error) and "at character 2" in str(error)
    for index, (mine, reference) in enumerate(zip(got, expected, strict=True)):
        if index != 7:
            np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)


def test_a_lone_surrogate_in_a_query_fails_only_its_own_thread(model_path: str) -> None:
    """The same for threads, and for a surrogate in the query."""
    calls = [_pairs(i) for i in range(15)]
    expected = _reference(model_path, calls)
    calls[3] = [("why \udfff?", text) for _, text in calls[3]]
    engine = get_engine(model_path, max_wait_ms=200, cache_size=0, token_budget=10**9)
    engine.load()
    got: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def call(i: int) -> None:
        barrier.wait()
        try:
            got[i] = engine.score_pairs(calls[i])
        except Exception as exc:
            got[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert isinstance(got[3], ValueError)
    assert "pairs[0]: the query has a lone surrogate" in str(got[3])
    for index, (mine, reference) in enumerate(zip(got, expected, strict=True)):
        if index != 3:
            np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)


def test_every_other_unusual_character_is_scored_as_given(model_path: str) -> None:
    """NUL, control characters, right-to-left text, combining marks and emoji sequences
    are valid text: scored, no error, and the caller's strings are untouched."""
    texts = [
        "nul \x00 inside",
        "bell \x07 and tab \t",
        "\u05e9\u05dc\u05d5\u05dd right-to-left \u202e override",
        "e\u0301 combining a\u0308",
        "family \U0001f468\u200d\U0001f469\u200d\U0001f467 flag \U0001f1ef\U0001f1f5",
        "",
        "   ",
    ]
    snapshot = list(texts)
    results = get_engine(model_path).score_pairs([("query \x00", t) for t in texts])
    assert len(results) == len(texts) and all(r.num_windows == 1 for r in results)
    assert texts == snapshot


def test_a_tokenizer_failure_inside_a_drain_fails_only_its_pair(model_path: str) -> None:
    """Below the engine's own check: the owner's batched tokenizer call raises, and the
    drain falls back to pair-by-pair encoding, so only the unreadable pair fails."""
    engine = get_engine(model_path)
    loaded = engine._runner.loaded
    good = [Request("sequence", _pairs(i), 512, 128, 4096) for i in range(3)]
    bad = Request("sequence", [("q", TEXTS[0]), ("q", SURROGATE), ("q", TEXTS[1])], 512, 128, 4096)
    encoded = encode_requests(loaded, [good[0], bad, good[1], good[2]])
    assert isinstance(encoded[1][1], TypeError)  # the tokenizer's own error, kept as raised
    assert not isinstance(encoded[1][0], Exception) and not isinstance(encoded[1][2], Exception)
    for request, windows in zip(good, (encoded[0], encoded[2], encoded[3]), strict=True):
        [alone] = encode_requests(loaded, [request])
        assert [[w.input_ids for w in pair] for pair in windows] == [  # type: ignore[union-attr]
            [w.input_ids for w in pair]  # type: ignore[union-attr]
            for pair in alone
        ]


# ------------------------------------------------------------------------------- forward


def test_a_forward_pass_failing_on_one_callers_windows_fails_only_that_caller(
    model_path: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """All windows share one batch; the device fails on one caller's text. The batch is
    narrowed down: that caller gets the error (naming its pair), the others their results."""
    calls = [_pairs(i) for i in range(8)]
    expected = _reference(model_path, calls)
    calls[5] = [*calls[5][:2], (calls[5][0][0], POISON)]
    engine = get_engine(model_path, max_wait_ms=300, cache_size=0, token_budget=10**9)
    device = Device(engine, monkeypatch)
    device.poison = engine._runner.loaded.tokenizer.unk_token_id
    got: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def call(i: int) -> None:
        barrier.wait()
        try:
            got[i] = engine.score_pairs(calls[i])
        except Exception as exc:
            got[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert isinstance(got[5], RuntimeError)
    assert "pairs[2]" in str(got[5]) and "simulated" in str(got[5])
    for index, (mine, reference) in enumerate(zip(got, expected, strict=True)):
        if index != 5:
            np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)


def test_a_failing_pair_does_not_cost_its_call_the_other_pairs(
    model_path: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """Within one call the failing pair is named; its good pairs were scored and cached,
    so the retry without it runs no forward pass."""
    engine = get_engine(model_path, max_length=200)
    engine.clear_cache()
    device = Device(engine, monkeypatch)
    device.poison = engine._runner.loaded.tokenizer.unk_token_id
    good = [("what is this?", text) for text in TEXTS[:4]]
    with pytest.raises(RuntimeError, match=r"pairs\[2\]"):
        engine.score_pairs([good[0], good[1], ("what is this?", POISON), good[2], good[3]])
    passes = engine.forward_passes
    got = engine.score_pairs(good)
    assert engine.forward_passes == passes
    expected = get_engine(model_path, max_length=200, cache_size=0).score_pairs(good)
    np.testing.assert_allclose(_logits(got), _logits(expected), atol=1e-5)


# ----------------------------------------------------------------------------------- OOM


def test_a_simulated_out_of_memory_splits_and_every_caller_gets_its_results(
    model_path: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """A device that runs out of memory above 2 rows: batches are halved until they fit,
    concurrent callers all get correct results, and the lowered budget is in force."""
    calls = [_pairs(i) for i in range(6)]
    expected = _reference(model_path, calls)
    engine = get_engine(model_path, max_wait_ms=200, cache_size=0, token_budget=8192)
    device = Device(engine, monkeypatch)
    device.max_rows = 2
    got: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def call(i: int) -> None:
        barrier.wait()
        got[i] = engine.score_pairs(calls[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for mine, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(_logits(mine), _logits(reference), atol=1e-5)
    assert engine.oom_splits >= 1
    assert max(device.rows) <= 2
    cap = engine.token_budget_cap
    assert cap is not None and cap < 8192


def test_the_token_budget_grows_back_after_an_out_of_memory_split(
    model_path: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """Once the device has room again, the lowered budget doubles every few batches and
    returns to the configured one, never above it."""
    engine = get_engine(model_path, max_wait_ms=0, cache_size=0, token_budget=512)
    device = Device(engine, monkeypatch)
    device.max_rows = 1
    engine.score_pairs([("q", text) for text in TEXTS])
    first_cap = engine.token_budget_cap
    assert first_cap is not None and engine.oom_splits >= 1
    device.max_rows = None  # memory freed elsewhere
    caps: list[int | None] = []
    for index in range(BUDGET_RECOVERY_BATCHES * 12):
        engine.score_pairs([(f"q {index}", TEXTS[index % len(TEXTS)])])  # one batch each
        caps.append(engine.token_budget_cap)
        if caps[-1] is None:
            break
    assert caps[-1] is None, caps
    seen = [first_cap, *(cap for cap in caps if cap is not None)]
    assert seen == sorted(seen) and all(cap < 512 for cap in seen)
    assert len(set(seen)) > 2  # it grew in steps
    # A device that still cannot take big batches: the budget probes upwards, the next
    # out-of-memory error lowers it again, and every result stays correct.
    device.max_rows = 2
    pairs = [(f"again {i}", TEXTS[i % len(TEXTS)]) for i in range(12)]
    got = engine.score_pairs(pairs)
    expected = get_engine(model_path, cache_size=0, token_budget=64).score_pairs(pairs)
    np.testing.assert_allclose(_logits(got), _logits(expected), atol=1e-5)
    cap = engine.token_budget_cap
    assert cap is not None and cap < 512


# ------------------------------------------------------------------- cancel and timeout


def _blocked(engine: CrossEncoderEngine, device: Device) -> threading.Thread:
    """Stall the device on a blocker call in a thread; returns once the pass has begun."""
    device.gate = threading.Event()
    blocker = threading.Thread(target=engine.score_pairs, args=([("blocker", "stalls")],))
    blocker.start()
    assert device.entered.wait(30)
    return blocker


def test_a_cancelled_caller_does_not_cancel_the_pair_another_caller_joined(
    model_path: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """A and B both ask for pair X; A computes it, B waits for A's computation. A is
    cancelled: B still gets X, and X is computed exactly once."""
    engine = get_engine(model_path, max_wait_ms=0)
    engine.clear_cache()
    device = Device(engine, monkeypatch)
    query = "cancellation question"
    x, y, z = ((query, TEXTS[i]) for i in range(3))
    reference = get_engine(model_path, cache_size=0).score_pairs([x, y, z])
    blocker = _blocked(engine, device)
    rows_before = len(device.rows)

    async def main() -> list[Any]:
        a = asyncio.ensure_future(engine.ascore_pairs([x, y]))
        await asyncio.sleep(0.05)  # A has claimed X and Y and queued its request
        b = asyncio.ensure_future(engine.ascore_pairs([x]))
        c = asyncio.ensure_future(engine.ascore_pairs([z]))
        await asyncio.sleep(0.05)
        assert engine._runner.cache.in_flight == 4  # blocker, X, Y (A), Z (C); B joined X
        a.cancel()
        assert device.gate is not None
        device.gate.set()
        return list(await asyncio.gather(a, b, c, return_exceptions=True))

    got_a, got_b, got_c = asyncio.run(main())
    blocker.join(30)
    assert isinstance(got_a, asyncio.CancelledError)
    np.testing.assert_allclose(_logits(got_b), _logits(reference[:1]), atol=1e-5)
    np.testing.assert_allclose(_logits(got_c), _logits(reference[2:]), atol=1e-5)
    assert sum(device.rows[rows_before + 1 :]) == 3  # X, Y and Z, once each (blocker first)
    assert engine._runner.cache.in_flight == 0


def test_a_computation_everybody_abandoned_is_never_run(
    model_path: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """A and its joiner B are both cancelled before the owner reaches their request: it is
    skipped, nothing of it is cached, and the pair is computed afresh when asked again."""
    engine = get_engine(model_path, max_wait_ms=0)
    engine.clear_cache()
    device = Device(engine, monkeypatch)
    x = ("abandoned question", TEXTS[3])
    z = ("kept question", TEXTS[4])
    blocker = _blocked(engine, device)
    rows_before = len(device.rows)

    async def main() -> list[Any]:
        a = asyncio.ensure_future(engine.ascore_pairs([x]))
        await asyncio.sleep(0.05)
        b = asyncio.ensure_future(engine.ascore_pairs([x]))
        c = asyncio.ensure_future(engine.ascore_pairs([z]))
        await asyncio.sleep(0.05)
        a.cancel()
        b.cancel()
        await asyncio.sleep(0)
        assert device.gate is not None
        device.gate.set()
        return list(await asyncio.gather(a, b, c, return_exceptions=True))

    got_a, got_b, got_c = asyncio.run(main())
    blocker.join(30)
    assert isinstance(got_a, asyncio.CancelledError)
    assert isinstance(got_b, asyncio.CancelledError)
    assert len(got_c) == 1
    assert sum(device.rows[rows_before + 1 :]) == 1  # only Z ran
    assert engine._runner.cache.in_flight == 0
    [again] = engine.score_pairs([x])
    [fresh] = get_engine(model_path, cache_size=0).score_pairs([x])
    np.testing.assert_allclose(again.window_logits, fresh.window_logits, atol=1e-5)


def test_a_caller_that_times_out_fails_alone(
    model_path: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """asyncio.wait_for gives up on one caller while the device stalls; a caller of the
    same pair that keeps waiting, and another caller, get correct results."""
    engine = get_engine(model_path, max_wait_ms=0)
    engine.clear_cache()
    device = Device(engine, monkeypatch)
    x = ("timeout question", TEXTS[0])
    z = ("patient question", TEXTS[1])
    reference = get_engine(model_path, cache_size=0).score_pairs([x, z])
    blocker = _blocked(engine, device)

    async def main() -> list[Any]:
        impatient = asyncio.ensure_future(asyncio.wait_for(engine.ascore_pairs([x]), 0.1))
        await asyncio.sleep(0.02)
        patient = asyncio.ensure_future(engine.ascore_pairs([x, z]))
        outcome = await asyncio.gather(impatient, return_exceptions=True)
        assert device.gate is not None
        device.gate.set()
        return [*outcome, await patient]

    got_impatient, got_patient = asyncio.run(main())
    blocker.join(30)
    assert isinstance(got_impatient, asyncio.TimeoutError)  # TimeoutError from 3.11
    np.testing.assert_allclose(_logits(got_patient), _logits(reference), atol=1e-5)
    assert engine._runner.cache.in_flight == 0


# ------------------------------------------------------------------------------- release


def test_release_while_callers_and_joiners_wait_answers_every_one(
    model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """release_engines() while the device stalls: every waiting caller, including those
    waiting on another caller's computation, ends with its correct result or a
    RuntimeError that says the engine was released; none hangs."""
    engine = get_engine(model_path, max_wait_ms=0)
    engine.clear_cache()
    calls = [_pairs(i) for i in range(6)] + [_pairs(2), _pairs(4)]  # the last two join
    expected = _reference(model_path, calls)
    device = Device(engine, monkeypatch)
    blocker = _blocked(engine, device)
    outcomes: list[Any] = [None] * len(calls)

    def call(i: int) -> None:
        try:
            outcomes[i] = engine.score_pairs(calls[i])
        except RuntimeError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    releaser = threading.Thread(target=release_engines)
    releaser.start()
    assert device.gate is not None
    device.gate.set()
    for thread in [*threads, releaser, blocker]:
        thread.join(timeout=60)
        assert not thread.is_alive()
    for outcome, reference in zip(outcomes, expected, strict=True):
        if isinstance(outcome, RuntimeError):
            assert "released" in str(outcome)
        else:
            np.testing.assert_allclose(_logits(outcome), _logits(reference), atol=1e-5)
    assert not any(t.name.startswith("crag-engine:") for t in threading.enumerate())


# ---------------------------------------------------------------------------------- fork


def _score_in_child(engine: CrossEncoderEngine, path: str, connection: Any) -> None:
    try:
        # Pairs the parent never cached: they need a forward pass, so an owner thread.
        before_fork = engine.score_pairs(_pairs(4))
        fresh = get_engine(path).score_pairs(_pairs(5))
        connection.send((_logits(before_fork), _logits(fresh), engine.load_count))
    except BaseException as exc:  # reported to the parent, which fails the test
        connection.send(repr(exc))


def test_after_a_fork_the_child_loads_its_own_model_and_never_hangs(model_path: str) -> None:
    """A process that used the engine forks (gunicorn/celery prefork, multiprocessing):
    the child's calls load the model afresh and return the parent's results, through an
    engine obtained before the fork and through get_engine; the parent keeps working."""
    engine = get_engine(model_path)
    engine.score_pairs(_pairs(3))  # the parent's owner thread is running
    uncached = get_engine(model_path, cache_size=0)
    expected = [_logits(uncached.score_pairs(_pairs(i))) for i in (4, 5)]
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_score_in_child, args=(engine, model_path, sender))
    child.start()
    try:
        assert receiver.poll(60), "the forked child hung"
        answer = receiver.recv()
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
    assert not isinstance(answer, str), answer
    before_fork, fresh, child_loads = answer
    np.testing.assert_allclose(before_fork, expected[0], atol=1e-5)
    np.testing.assert_allclose(fresh, expected[1], atol=1e-5)
    assert child_loads == 1  # the child's own load (its parent's runner is not used)
    assert child.exitcode == 0
    np.testing.assert_allclose(_logits(engine.score_pairs(_pairs(4))), expected[0], atol=1e-5)


def test_two_threads_scoring_the_same_new_pair_compute_it_once(
    model_path: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """While the device runs one caller's pair, a second caller of the same pair waits for
    that computation instead of queueing its own; both get the same result."""
    engine = get_engine(model_path, max_wait_ms=0)
    engine.clear_cache()
    device = Device(engine, monkeypatch)
    pair = ("shared new question", TEXTS[5])
    device.gate = threading.Event()
    got: list[Any] = [None, None]

    def call(i: int) -> None:
        got[i] = engine.score_pairs([pair])

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert device.entered.wait(30)  # the first caller's pass is on the device
    second = threading.Thread(target=call, args=(1,))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # waiting for the first caller's computation
    device.gate.set()
    for thread in (first, second):
        thread.join(30)
    assert got[0] == got[1]
    assert device.rows == [1]  # one forward pass, one row
    info = engine.cache_info()
    assert (info.misses, info.hits, info.size) == (1, 1, 1)


def test_a_joiner_of_a_cancelled_caller_stuck_on_a_full_queue_never_hangs(
    model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A (async) claims pair X but waits for room in a full queue; B (a thread) joins X; A is
    cancelled, then the engine is released before A's request found room: B ends with the
    "released" error instead of waiting for X forever."""
    engine = get_engine(model_path, max_wait_ms=0, max_queue=1)
    engine.clear_cache()
    device = Device(engine, monkeypatch)
    blocker = _blocked(engine, device)

    def fill() -> None:
        with contextlib.suppress(RuntimeError):  # it may be failed by the release: fine
            engine.score_pairs([("filler", "fills the queue")])

    filler = threading.Thread(target=fill)
    filler.start()
    deadline = time.monotonic() + 30
    while engine._runner.queued < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    x = ("stuck question", TEXTS[0])
    joined: list[Any] = []

    def join_x() -> None:
        try:
            joined.append(engine.score_pairs([x]))
        except RuntimeError as exc:
            joined.append(exc)

    async def main() -> None:
        a = asyncio.ensure_future(engine.ascore_pairs([x]))
        await asyncio.sleep(0.1)  # A has claimed X and waits for a queue slot
        b = threading.Thread(target=join_x)
        b.start()
        await asyncio.sleep(0.1)  # B has joined A's computation of X
        a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await a
        releaser = threading.Thread(target=release_engines)  # it waits for the owner
        releaser.start()
        await asyncio.to_thread(b.join, 30)
        assert device.gate is not None
        device.gate.set()
        await asyncio.to_thread(releaser.join, 30)
        assert not b.is_alive(), "the joiner hangs"

    asyncio.run(main())
    for thread in (blocker, filler):
        thread.join(30)
    assert len(joined) == 1 and isinstance(joined[0], RuntimeError)
    assert "released" in str(joined[0])
