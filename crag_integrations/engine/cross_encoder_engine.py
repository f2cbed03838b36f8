"""The public face of one shared model: :class:`CrossEncoderEngine`.

An engine is one :class:`~crag_integrations.config.EngineConfig` (windowing, batching and
cache settings) on one :class:`~crag_integrations.engine.runner.ModelRunner` (the loaded
weights, shared by every engine whose configuration names the same weights). A call first
checks its inputs, answers what the score cache holds, joins the computations of pairs
other callers are already running, then sends the remaining unique pairs to the runner as
one request and puts the results back in input order.

Each pair succeeds or fails on its own: the runner returns one outcome per pair (a result
or the exception that pair alone raised), and a call raises for its first failing pair,
naming it (``pairs[i]``). The runner is bound lazily, on first use: getting an engine
imports no torch and takes no lock an event loop could wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crag_integrations.config import EngineConfig
from crag_integrations.engine.batching import default_token_budget
from crag_integrations.engine.cache import CacheInfo, InFlight, Joined
from crag_integrations.engine.requests import Pair, Request, Task
from crag_integrations.engine.runner import ModelRunner
from crag_integrations.errors import IncompatibleModelError
from crag_integrations.inputs import unencodable
from crag_integrations.types import ModelHead, SequenceScores, TokenScores

__all__ = ["CrossEncoderEngine"]

_T = TypeVar("_T")


def _checked_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """``pairs`` as a list of ``(str, str)``, or a ``TypeError`` naming the first bad one
    (the engine never turns ``None`` or a number into the text ``"None"`` and scores it)."""
    checked = []
    for index, pair in enumerate(pairs):
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not all(isinstance(part, str) for part in pair)
        ):
            raise TypeError(f"pairs[{index}] must be a (query, text) pair of str, not {pair!r}")
        checked.append((pair[0], pair[1]))
    return checked


def _check_encodable(pairs: Sequence[Pair]) -> None:
    """Raise ``ValueError`` naming the first pair with text the tokenizer cannot read."""
    last_query: str | None = None
    for index, (query, text) in enumerate(pairs):
        if query is not last_query:
            problem = unencodable(query)
            if problem is not None:
                raise ValueError(f"pairs[{index}]: the query has {problem}")
            last_query = query
        problem = unencodable(text)
        if problem is not None:
            raise ValueError(f"pairs[{index}]: the text has {problem}")


def _pair_error(exc: BaseException, position: int) -> BaseException:
    """A fresh exception for the caller whose ``pairs[position]`` failed with ``exc``.

    Fresh, because one failure can reach several callers (and threads) at once; of the
    same type where it can be rebuilt from a message, chained to the original.
    """
    message = f"pairs[{position}]: {exc}"
    error: BaseException
    try:
        error = type(exc)(message)
    except Exception:  # an exception type that cannot be built from one message
        error = RuntimeError(message)
    error.__cause__ = exc
    return error


async def _wait(future: Future[_T]) -> _T:
    """Await a concurrent future without cancelling it when the awaiting task is cancelled.

    ``asyncio.wrap_future`` would cancel the shared future along with one caller; other
    callers may be waiting for the same computation.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[_T] = loop.create_future()

    def transfer(source: Future[_T]) -> None:
        if waiter.done():
            return
        if source.cancelled():
            waiter.cancel()
            return
        error = source.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(source.result())

    def done(source: Future[_T]) -> None:
        # A closed loop (even one closing in between) has nobody waiting any more.
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(transfer, source)

    future.add_done_callback(done)
    return await waiter


@dataclass
class _Plan:
    """A call split into cached results, joined computations and the pairs it computes."""

    results: list[Any]
    #: The unique pairs this call computes, and for each the input positions it fills.
    missing: list[Pair] = field(default_factory=list)
    positions: list[list[int]] = field(default_factory=list)
    #: Pairs other callers are computing, and for each the input positions it fills.
    joined: list[tuple[Joined, list[int]]] = field(default_factory=list)
    #: This call's claim on its missing pairs in the score cache (cache on only).
    flight: InFlight | None = None
    request: Request | None = None

    @property
    def flights(self) -> list[InFlight]:
        """Every computation this call waits for, once each."""
        flights = {id(j.flight): j.flight for j, _ in self.joined}
        if self.flight is not None and self.flight.keys:
            flights[id(self.flight)] = self.flight
        return list(flights.values())


class CrossEncoderEngine:
    """A shared, batched cross-encoder. Get one with :func:`get_engine`, never construct it.

    Sync verbs block the calling thread until the owner thread has scored the request;
    async verbs (``a``-prefixed) await the same request without blocking the event loop.
    Results come back in input order whatever order the batches ran in. Pairs scored
    before (same task, window length, stride, query and text) are answered from the
    model's score cache without a forward pass, and a pair another caller is computing
    right now is waited for, not computed twice; see :meth:`cache_info`.

    Every pair succeeds or fails on its own: a text the tokenizer cannot read, a query
    that leaves no room for text, or a forward pass that fails on a pair's windows fails
    the calls that asked for that pair (``pairs[i]`` in the message), never the callers
    whose pairs happened to share a drain or a batch with it.

    Example:
        >>> engine = get_engine("cross-encoder/ms-marco-MiniLM-L6-v2", device="cpu")
        >>> engine.is_loaded
        False
    """

    def __init__(
        self, config: EngineConfig, runner_for: Callable[[EngineConfig], ModelRunner]
    ) -> None:
        self.config = config
        self._runner_for = runner_for
        self._bound: ModelRunner | None = None

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        backend = self.config.backend + (f"-{self.config.quantize}" if self.config.quantize else "")
        return f"CrossEncoderEngine({self.config.model!r}, backend={backend!r}, {state})"

    @property
    def _runner(self) -> ModelRunner:
        """The runner of this engine's weights, bound on first use (imports torch)."""
        runner = self._bound
        if runner is None:
            # Concurrent first uses all get the registry's one runner for these weights.
            runner = self._bound = self._runner_for(self.config)
        return runner

    def _unbind(self) -> None:
        """Forget the runner (after a fork: the next use binds the child's own)."""
        self._bound = None

    # -- introspection -------------------------------------------------------------------

    @property
    def head(self) -> ModelHead:
        """The checkpoint's head (loads the model on first access)."""
        return self._runner.loaded.head

    @property
    def model_max_length(self) -> int:
        """The most tokens one window of this checkpoint can hold (loads the model).

        The smaller of the tokenizer's ``model_max_length`` (when it declares one) and the
        positions the model can embed: the size of its absolute position table (less the
        offset RoBERTa-style models start at), or, for models without one (rotary or
        relative positions: ModernBERT, DeBERTa-v2), ``max_position_embeddings``.
        """
        return self._runner.loaded.default_max_length

    @property
    def max_length(self) -> int:
        """Tokens per window (loads the model on first access).

        Raises:
            ValueError: The configured ``max_length`` is above :attr:`model_max_length`.
        """
        return self._window_length(self.config.max_length)

    def _window_length(self, requested: int | None) -> int:
        loaded = self._runner.loaded
        limit = loaded.default_max_length
        if requested is None:
            return limit
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 8:
            raise ValueError(f"max_length must be an int of at least 8 tokens, not {requested!r}")
        if requested > limit:
            raise ValueError(
                f"max_length={requested} is more than the {limit} tokens one window of "
                f"{self.config.model!r} can hold ({loaded.length_limit_reason}); use "
                f"max_length <= {limit}, or None for the model's limit (longer texts are "
                "split into windows either way)"
            )
        return requested

    @property
    def device(self) -> str:
        """The resolved torch device, e.g. ``"cpu"`` or ``"cuda"``."""
        return self._runner.key.device

    @property
    def dtype(self) -> str:
        """The resolved weight dtype, e.g. ``"float32"``."""
        return self._runner.key.dtype

    @property
    def attention(self) -> str:
        """The attention kernel in use: ``"flash_attention_2"``, ``"sdpa"`` or ``"default"``."""
        return self._runner.loaded.attention

    @property
    def token_budget(self) -> int:
        """Padded tokens per forward pass: the configured budget, else the device's default."""
        if self.config.token_budget is not None:
            return self.config.token_budget
        return default_token_budget(self.device)

    @property
    def token_budget_cap(self) -> int | None:
        """The lowered budget in force after an out-of-memory split, or ``None``.

        It doubles after every :data:`~crag_integrations.engine.runner.BUDGET_RECOVERY_BATCHES`
        batches that run without one, and is lifted once it reaches the configured budget.
        """
        return self._runner.budget_cap

    @property
    def is_loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._bound is not None and self._bound.is_loaded

    @property
    def load_count(self) -> int:
        """How many times this engine's weights were loaded (1 after first use)."""
        return self._runner.load_count

    @property
    def forward_passes(self) -> int:
        """Forward passes run by the model behind this engine (shared with its twins)."""
        return self._runner.forward_passes

    @property
    def drains(self) -> int:
        """Times the owner thread took queued requests and ran them together.

        Fewer drains than calls means concurrent calls shared forward passes.
        """
        return self._runner.drains

    @property
    def queued(self) -> int:
        """Requests waiting for the owner thread now (at most ``max_queue``)."""
        return self._runner.queued

    @property
    def oom_splits(self) -> int:
        """Batches split in half after an accelerator out-of-memory error."""
        return self._runner.oom_splits

    def cache_info(self) -> CacheInfo:
        """Hits, misses, size, bounds and estimated bytes of this model's score cache.

        Engines configured with ``cache_size=0`` or ``cache_bytes=0`` neither read nor
        write it.
        """
        return self._runner.cache.info()

    def clear_cache(self) -> None:
        """Forget every cached score of this model (and reset the counters)."""
        self._runner.cache.clear()

    def load(self) -> ModelHead:
        """Load the weights now (otherwise the first call does) and return the head.

        Raises:
            ValueError: The configured ``max_length`` is above what the checkpoint reads.
        """
        head = self.head
        _ = self.max_length  # validated against the checkpoint as soon as it is known
        return head

    async def aload(self) -> ModelHead:
        """Async :meth:`load`: binding (torch import) and loading run in a worker thread."""
        if self.is_loaded:
            return self.load()
        return await asyncio.to_thread(self.load)

    def _check_head(self, task: Task) -> None:
        head = self.head
        if head.kind != task:
            wanted = "sequence-classification" if task == "sequence" else "token-classification"
            raise IncompatibleModelError(
                f"{self.config.model!r} has a {head.kind}-classification head, but this call "
                f"needs a {wanted} head."
            )

    def _plan(
        self, task: Task, pairs: Sequence[Pair], max_length: int | None, stride: int | None
    ) -> _Plan:
        """Check the inputs, answer what the cache can, claim or join the rest."""
        self._check_head(task)
        clean = _checked_pairs(pairs)
        _check_encodable(clean)
        length = self._window_length(self.config.max_length if max_length is None else max_length)
        step = self.config.stride if stride is None else stride
        budget = self.token_budget
        runner = self._runner
        if self.config.uses_cache:
            found, flight = runner.cache.claim([(task, length, step, q, t) for q, t in clean])
            if flight is None and not any(type(value) is Joined for value in found):
                return _Plan(results=found)  # every pair cached: the steady state
            plan = _Plan(results=[None] * len(clean), flight=flight)
            joined: dict[tuple[int, int], int] = {}
            for index, (pair, value) in enumerate(zip(clean, found, strict=True)):
                if value is None:  # claimed: this call computes it
                    plan.missing.append(pair)
                    plan.positions.append([index])
                elif not isinstance(value, Joined):
                    plan.results[index] = value
                elif value.flight is plan.flight:  # a duplicate within this call
                    plan.positions[value.index].append(index)
                else:
                    slot = joined.setdefault((id(value.flight), value.index), len(plan.joined))
                    if slot == len(plan.joined):
                        plan.joined.append((value, []))
                    plan.joined[slot][1].append(index)
        else:
            plan = _Plan(results=[None] * len(clean))
            where: dict[Pair, list[int]] = {}
            for index, pair in enumerate(clean):
                where.setdefault(pair, []).append(index)
            plan.missing, plan.positions = list(where), list(where.values())
        if plan.missing:
            plan.request = Request(
                task=task,
                pairs=plan.missing,
                max_length=length,
                stride=step,
                token_budget=budget,
                max_wait_s=self.config.max_wait_ms / 1000.0,
                max_queue=self.config.max_queue,
            )
            if plan.flight is not None:
                flight, cache = plan.flight, runner.cache
                plan.request.future = flight.future
                flight.future.add_done_callback(lambda _done: cache.settle(flight))
        return plan

    @staticmethod
    def _fail_submission(plan: _Plan, exc: BaseException) -> None:
        """The request never reached the owner: fail it, so joined callers do not wait."""
        assert plan.request is not None
        future = plan.request.future
        if not future.done() and future.set_running_or_notify_cancel():
            future.set_exception(exc)

    def _abandon(self, plan: _Plan) -> None:
        """This caller stopped waiting (cancelled, timed out): let go of its computations."""
        flights = plan.flights
        if flights:
            self._runner.cache.abandon(flights)
        elif plan.request is not None:
            plan.request.future.cancel()  # nobody else waits for an uncached request

    @staticmethod
    def _complete(plan: _Plan, own: Sequence[Any], joined: Sequence[Any]) -> list[Any]:
        """Put every outcome in place; raise for the first input position that failed."""
        failure: tuple[int, BaseException] | None = None
        outcomes = list(zip(own, plan.positions, strict=True))
        outcomes += [
            (value, positions) for value, (_, positions) in zip(joined, plan.joined, strict=True)
        ]
        for value, positions in outcomes:
            if isinstance(value, BaseException):
                if failure is None or positions[0] < failure[0]:
                    failure = (positions[0], value)
                continue
            for position in positions:
                plan.results[position] = value
        if failure is not None:
            raise _pair_error(failure[1], failure[0])
        return plan.results

    def _run(
        self, task: Task, pairs: Sequence[Pair], max_length: int | None, stride: int | None
    ) -> list[Any]:
        plan = self._plan(task, pairs, max_length, stride)
        if plan.request is None and not plan.joined:
            return plan.results
        own: list[Any] = []
        if plan.request is not None:
            try:
                self._runner.submit(plan.request)
            except BaseException as exc:
                self._fail_submission(plan, exc)
                raise
            own = plan.request.future.result()
        joined = [j.flight.future.result()[j.index] for j, _ in plan.joined]
        return self._complete(plan, own, joined)

    async def _arun(
        self, task: Task, pairs: Sequence[Pair], max_length: int | None, stride: int | None
    ) -> list[Any]:
        await self.aload()
        plan = self._plan(task, pairs, max_length, stride)
        try:
            own: list[Any] = []
            if plan.request is not None:
                try:
                    await self._runner.aenqueue(plan.request)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    self._fail_submission(plan, exc)
                    raise
                own = await _wait(plan.request.future)
            joined = [(await _wait(j.flight.future))[j.index] for j, _ in plan.joined]
        except asyncio.CancelledError:
            self._abandon(plan)
            raise
        return self._complete(plan, own, joined)

    def score_pairs(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[SequenceScores]:
        """Raw sequence-head logits for each ``(query, text)`` pair, in input order.

        Args:
            pairs: ``(query, text)`` string pairs. Callers validate them (the roles do).
            max_length: Tokens per window for this call (default: the engine's).
            stride: Overlapping tokens between windows for this call (default: the engine's).

        Returns:
            One :class:`SequenceScores` per pair, with the logits of every window.
        """
        if not pairs:
            return []
        return self._run("sequence", pairs, max_length, stride)

    async def ascore_pairs(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[SequenceScores]:
        """Async :meth:`score_pairs`; awaits the owner thread without blocking the loop."""
        if not pairs:
            return []
        return await self._arun("sequence", pairs, max_length, stride)

    def token_scores(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[TokenScores]:
        """Per-token label probabilities of each pair's text, in input order.

        Offsets are character offsets into the text (the second element of each pair).
        Each window's probabilities are returned as its forward pass gave them
        (``window_ranges``, ``window_probabilities``), beside their mean over the windows
        that read a token (``probabilities``).
        """
        if not pairs:
            return []
        return self._run("token", pairs, max_length, stride)

    async def atoken_scores(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[TokenScores]:
        """Async :meth:`token_scores`."""
        if not pairs:
            return []
        return await self._arun("token", pairs, max_length, stride)
