"""The public face of one shared model: :class:`CrossEncoderEngine`.

An engine is one :class:`~crag_integrations.config.EngineConfig` (windowing, batching and
cache settings) on one :class:`~crag_integrations.engine.runner.ModelRunner` (the loaded
weights, shared by every engine whose configuration names the same weights). A call first
answers what the score cache holds, then sends the remaining unique pairs to the runner as
one request and puts the results back in input order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crag_integrations.config import EngineConfig
from crag_integrations.engine.batching import default_token_budget
from crag_integrations.engine.cache import CacheInfo
from crag_integrations.engine.requests import Pair, Request, Task
from crag_integrations.engine.runner import ModelRunner
from crag_integrations.errors import IncompatibleModelError
from crag_integrations.types import ModelHead, SequenceScores, TokenScores

__all__ = ["CrossEncoderEngine"]


@dataclass
class _Plan:
    """A call split into cached results and the unique pairs that still need the model."""

    results: list[Any]
    keys: list[tuple[Any, ...]] | None
    missing: list[Pair]
    #: For each missing pair, the positions in ``results`` it fills.
    positions: list[list[int]]


class CrossEncoderEngine:
    """A shared, batched cross-encoder. Get one with :func:`get_engine`, never construct it.

    Sync verbs block the calling thread until the owner thread has scored the request;
    async verbs (``a``-prefixed) await the same request without blocking the event loop.
    Results come back in input order whatever order the batches ran in. Pairs scored
    before (same task, window length, stride, query and text) are answered from the
    model's score cache without a forward pass; see :meth:`cache_info`.

    Example:
        >>> engine = get_engine("cross-encoder/ms-marco-MiniLM-L6-v2", device="cpu")
        >>> engine.is_loaded
        False
    """

    def __init__(self, config: EngineConfig, runner: ModelRunner) -> None:
        self.config = config
        self._runner = runner
        runner.cache.grow(config.cache_size)

    def __repr__(self) -> str:
        state = "loaded" if self._runner.is_loaded else "not loaded"
        return f"CrossEncoderEngine({self.config.model!r}, {state})"

    # -- introspection -------------------------------------------------------------------

    @property
    def head(self) -> ModelHead:
        """The checkpoint's head (loads the model on first access)."""
        return self._runner.loaded.head

    @property
    def max_length(self) -> int:
        """Tokens per window (loads the model on first access)."""
        return self.config.max_length or self._runner.loaded.default_max_length

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
    def is_loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._runner.is_loaded

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
        """Hits, misses, size and capacity of the score cache shared by this model's engines.

        Engines configured with ``cache_size=0`` neither read nor write it.
        """
        return self._runner.cache.info()

    def clear_cache(self) -> None:
        """Forget every cached score of this model (and reset the counters)."""
        self._runner.cache.clear()

    def load(self) -> ModelHead:
        """Load the weights now (otherwise the first call does) and return the head."""
        return self.head

    async def aload(self) -> ModelHead:
        """Async :meth:`load`: loading runs in a worker thread, once."""
        if self._runner.is_loaded:
            return self.head
        return await asyncio.to_thread(self.load)

    # -- scoring -------------------------------------------------------------------------

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
    ) -> tuple[_Plan, Request | None]:
        """Answer what the cache can; build one request for the unique remaining pairs."""
        self._check_head(task)
        clean = [(str(q), str(t)) for q, t in pairs]
        length = max_length or self.max_length
        step = self.config.stride if stride is None else stride
        results: list[Any] = [None] * len(clean)
        keys: list[tuple[Any, ...]] | None = None
        if self.config.cache_size > 0:
            keys = [(task, length, step, q, t) for q, t in clean]
            results = self._runner.cache.get_many(list(keys))
        where: dict[Pair, list[int]] = {}
        for index, (pair, found) in enumerate(zip(clean, results, strict=True)):
            if found is None:
                where.setdefault(pair, []).append(index)
        plan = _Plan(
            results=results, keys=keys, missing=list(where), positions=list(where.values())
        )
        if not plan.missing:
            return plan, None
        request = Request(
            task=task,
            pairs=plan.missing,
            max_length=length,
            stride=step,
            token_budget=self.token_budget,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            max_queue=self.config.max_queue,
        )
        return plan, request

    def _complete(self, plan: _Plan, computed: Sequence[Any]) -> list[Any]:
        stored: list[tuple[Any, Any]] = []
        for value, positions in zip(computed, plan.positions, strict=True):
            for position in positions:
                plan.results[position] = value
            if plan.keys is not None:
                stored.append((plan.keys[positions[0]], value))
        if stored:
            self._runner.cache.put_many(stored)
        return plan.results

    def _run(
        self, task: Task, pairs: Sequence[Pair], max_length: int | None, stride: int | None
    ) -> list[Any]:
        plan, request = self._plan(task, pairs, max_length, stride)
        if request is None:
            return plan.results
        return self._complete(plan, self._runner.submit(request).result())

    async def _arun(
        self, task: Task, pairs: Sequence[Pair], max_length: int | None, stride: int | None
    ) -> list[Any]:
        await self.aload()
        plan, request = self._plan(task, pairs, max_length, stride)
        if request is None:
            return plan.results
        return self._complete(plan, await self._runner.asubmit(request))

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
