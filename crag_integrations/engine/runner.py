"""The owner of one loaded model: one thread, one queue, requests in, results out.

Fast tokenizers are not safe to share across threads ("Already borrowed"), so each loaded
model has exactly one owner thread that holds the model and its tokenizer. Callers, sync or
async, put requests on the owner's bounded queue and wait on a future; the owner drains
every request waiting in the queue, windows them, packs all their windows into
length-sorted, token-budgeted batches, runs the forward passes and hands each caller its
own results. Concurrent callers therefore share forward passes.

Failures stay with the pairs that cause them. A request's result is one outcome per pair:
its result, or the exception that pair alone failed with. A pair whose encoding fails gets
that error; a forward pass that fails is retried on halves of its pairs until the failing
pairs are found (for a failure caused by one pair: about ``2 log2(pairs)`` extra passes),
so every other pair of the batch still gets its result. An accelerator out-of-memory error
first splits the batch in half and lowers the token budget of later batches; the lowered
budget doubles again after every :data:`BUDGET_RECOVERY_BATCHES` batches that run without
one, until it is back at the configured budget.

Both back-ends run behind the same owner thread, windows, batching and isolation: the
forward pass fills one set of padded int64 arrays and hands them to the torch model or to
the ONNX Runtime session (``backend="onnx"``), whose allocation failures count as
out-of-memory errors too.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from crag_integrations.engine.batching import (
    bucket_length,
    encode_requests,
    merge_token_windows,
    pack_batches,
)
from crag_integrations.engine.cache import ScoreCache
from crag_integrations.engine.devices import attention_backends
from crag_integrations.engine.loading import LoadedModel, LoadKey, load_model
from crag_integrations.engine.requests import Request, Task, Window
from crag_integrations.types import SequenceScores

__all__ = ["BUDGET_RECOVERY_BATCHES", "MAX_PAIRS_PER_DRAIN", "ModelRunner"]

logger = logging.getLogger(__name__)

#: Upper bound on pairs coalesced into one drain, so one huge burst cannot starve the queue.
MAX_PAIRS_PER_DRAIN = 8_192

#: Batches without an out-of-memory error after which a lowered token budget doubles. An
#: out-of-memory error costs one failed pass, so probing every 16 batches wastes at most
#: about 6% of passes on a device that really cannot take the larger batches.
BUDGET_RECOVERY_BATCHES = 16

_STOP = object()


def _is_out_of_memory(exc: BaseException, backend: str = "torch") -> bool:
    """Whether ``exc`` is an out-of-memory error (worth splitting the batch)."""
    if backend == "onnx":
        from crag_integrations.engine.onnx import is_onnx_out_of_memory

        return is_onnx_out_of_memory(exc)
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32, as ``torch.softmax`` computes it."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


class ModelRunner:
    """Owns one loaded model and tokenizer on one thread; requests in, results out."""

    def __init__(self, key: LoadKey) -> None:
        self.key = key
        self.load_count = 0
        self.forward_passes = 0
        self.oom_splits = 0
        self.drains = 0
        self.cache = ScoreCache(capacity=0)
        self._loaded: LoadedModel | None = None
        self._load_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Requests submitted but not yet taken by the owner thread (the bounded queue).
        self._pending = 0
        self._slots = threading.Condition()
        #: Lowered after an out-of-memory split, so later batches do not hit it again.
        self._budget_cap: int | None = None
        self._batches_since_cap = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def loaded(self) -> LoadedModel:
        """The model in memory; the first access loads it and starts the owner thread, once."""
        loaded = self._loaded
        if loaded is not None and not self._closed:
            return loaded  # the steady state: no lock
        with self._load_lock:
            if self._closed:
                raise RuntimeError("this engine was released; call get_engine() again")
            if self._loaded is None:
                self._loaded = load_model(self.key)
                self.load_count += 1
                self._thread = threading.Thread(
                    target=self._serve, name=f"crag-engine:{self.key.model}", daemon=True
                )
                self._thread.start()
            return self._loaded

    @property
    def is_loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._loaded is not None

    @property
    def queued(self) -> int:
        """Requests waiting for the owner thread right now."""
        return self._pending

    @property
    def budget_cap(self) -> int | None:
        """The token budget in force after an out-of-memory split, or ``None``."""
        return self._budget_cap

    def _enqueue(self, request: Request, *, block: bool) -> bool:
        with self._slots:
            while self._pending >= request.max_queue and not self._closed:
                if not block:
                    return False
                self._slots.wait()
            if self._closed:
                raise RuntimeError("this engine was released; call get_engine() again")
            self._pending += 1
            self._queue.put(request)
        return True

    def _enqueue_or_fail(self, request: Request) -> None:
        try:
            self._enqueue(request, block=True)
        except BaseException as exc:
            future = request.future
            if not future.done() and future.set_running_or_notify_cancel():
                future.set_exception(exc)
            raise

    def submit(self, request: Request) -> Future[Any]:
        """Queue ``request``, blocking while ``max_queue`` requests are already waiting."""
        _ = self.loaded  # load on first use, in the caller's thread, exactly once
        self._enqueue(request, block=True)
        return request.future

    async def aenqueue(self, request: Request) -> None:
        """Queue ``request`` without blocking the event loop (loading in a worker thread)."""
        if not self.is_loaded:
            await asyncio.to_thread(lambda: self.loaded)
        if not self._enqueue(request, block=False):
            # The queue is full: wait for a slot in a worker thread, not on the loop. The
            # thread outlives a cancelled caller, and others may have joined this request's
            # computation: if the slot never comes (the engine is released), the request
            # itself fails, so that nobody waits for it forever.
            await asyncio.to_thread(self._enqueue_or_fail, request)

    def close(self) -> None:
        """Stop the owner thread, fail what is still queued, free the weights and the cache."""
        with self._load_lock:
            self._closed = True
            thread = self._thread
        with self._slots:
            # Under the slots lock, so no request can slip in after the leftovers are drained.
            self._closed = True
            self._slots.notify_all()  # callers blocked on a full queue get an error
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout=30)
        while True:  # anything still queued gets a clear error instead of hanging
            try:
                leftover = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(leftover, Request) and leftover.future.set_running_or_notify_cancel():
                leftover.future.set_exception(RuntimeError("the engine was released"))
        self.cache.clear()
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded.device.type == "cuda":
            import torch

            del loaded
            torch.cuda.empty_cache()

    # -- owner thread ------------------------------------------------------------------

    def _collect(self, first: Request) -> tuple[list[Request], bool]:
        """Take ``first`` plus what arrives within its max wait, up to one token budget."""
        requests = [first]
        pairs = len(first.pairs)
        tokens = first.estimated_tokens
        deadline = time.monotonic() + first.max_wait_s
        stop_after = False
        while pairs < MAX_PAIRS_PER_DRAIN:
            try:
                following = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                full = self._pending >= first.max_queue  # nobody can join: stop waiting
                if remaining <= 0 or tokens >= first.token_budget or full:
                    break
                try:
                    following = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if following is _STOP:
                stop_after = True
                break
            requests.append(following)
            pairs += len(following.pairs)
            tokens += following.estimated_tokens
        return requests, stop_after

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            requests, stop_after = self._collect(first)
            self.drains += 1
            with self._slots:
                self._pending -= len(requests)
                self._slots.notify_all()
            live = [r for r in requests if r.future.set_running_or_notify_cancel()]
            if live:
                try:
                    self._process(live)
                except BaseException as exc:  # never let the owner thread die silently
                    for request in live:
                        if not request.future.done():
                            request.future.set_exception(exc)
            if stop_after:
                return

    def _process(self, requests: list[Request]) -> None:
        loaded = self._loaded
        assert loaded is not None
        encoded = encode_requests(loaded, requests)
        #: Per request, per pair: ``None`` while pending, else the exception it failed with.
        failures: list[list[BaseException | None]] = []
        all_windows: list[Window] = []
        for pairs in encoded:
            failures.append([w if isinstance(w, BaseException) else None for w in pairs])
            for windows in pairs:
                if not isinstance(windows, BaseException):
                    all_windows.extend(windows)

        token_budget = min(r.token_budget for r in requests)
        if self._budget_cap is not None:
            token_budget = min(token_budget, self._budget_cap)
        task = requests[0].task  # one model, one head: every request of a drain asks the same
        for batch in pack_batches(all_windows, token_budget):
            live = [w for w in batch if failures[w.request][w.pair] is None]
            if live:
                self._run_narrowing(loaded, live, task, failures)
                self._note_batch_done(min(r.token_budget for r in requests))

        for request, pairs, pair_failures in zip(requests, encoded, failures, strict=True):
            outcomes: list[Any] = []
            for windows, failure in zip(pairs, pair_failures, strict=True):
                if failure is not None:
                    outcomes.append(failure)
                    continue
                assert not isinstance(windows, BaseException)
                if request.task == "sequence":
                    outcomes.append(SequenceScores(window_logits=tuple(w.output for w in windows)))
                else:
                    outcomes.append(merge_token_windows(windows))
            request.future.set_result(outcomes)

    def _run_narrowing(
        self,
        loaded: LoadedModel,
        batch: list[Window],
        task: Task,
        failures: list[list[BaseException | None]],
    ) -> None:
        """Run ``batch``; if it fails, retry halves of its pairs until the failing ones are found.

        A pair is failed only when a batch of its own windows alone fails; its windows stay
        together, so a pair's windows never land in different outcomes.
        """
        failure: Exception | None = None
        try:
            self._forward_splitting(loaded, batch, task)
            return
        except Exception as exc:
            failure = exc
        groups: dict[tuple[int, int], list[Window]] = {}
        for window in batch:
            groups.setdefault((window.request, window.pair), []).append(window)
        if len(groups) == 1:
            [(request, pair)] = groups
            failures[request][pair] = failure
            return
        logger.warning(
            "A forward pass over %d pairs failed (%s: %s); retrying halves to find the "
            "pairs that fail",
            len(groups),
            type(failure).__name__,
            failure,
        )
        # Dropped before retrying: its traceback holds the failed pass's frames (activations).
        failure = None
        members = list(groups.values())
        half = len(members) // 2
        for part in (members[:half], members[half:]):
            self._run_narrowing(loaded, [w for ws in part for w in ws], task, failures)

    def _note_batch_done(self, configured: int) -> None:
        """Count a batch run under a lowered budget; double the budget every few of them."""
        if self._budget_cap is None:
            return
        self._batches_since_cap += 1
        if self._batches_since_cap < BUDGET_RECOVERY_BATCHES:
            return
        self._batches_since_cap = 0
        raised = self._budget_cap * 2
        self._budget_cap = None if raised >= configured else raised
        logger.info(
            "No out-of-memory error in %d batches; token budget raised to %s",
            BUDGET_RECOVERY_BATCHES,
            configured if self._budget_cap is None else self._budget_cap,
        )

    def _forward_splitting(self, loaded: LoadedModel, batch: list[Window], task: Task) -> None:
        """Run ``batch``; on out-of-memory, free the cache, halve it and retry each half."""
        try:
            self._forward(loaded, batch, task)
            return
        except Exception as exc:
            if len(batch) < 2 or not _is_out_of_memory(exc, loaded.backend):
                raise
        # Retry only after leaving the except block: while an exception is being handled its
        # traceback keeps the failed pass's frames, and so its activations, alive.
        if loaded.device.type == "cuda" and loaded.backend == "torch":
            import torch

            torch.cuda.empty_cache()
        half = len(batch) // 2
        self.oom_splits += 1
        self._budget_cap = half * max(len(w.input_ids) for w in batch)
        self._batches_since_cap = 0
        logger.warning(
            "Out of memory on a batch of %d windows; retrying as two batches of %d and "
            "capping later batches at %d tokens",
            len(batch),
            half,
            self._budget_cap,
        )
        self._forward_splitting(loaded, batch[:half], task)
        self._forward_splitting(loaded, batch[half:], task)

    def _forward(self, loaded: LoadedModel, batch: list[Window], task: Task) -> None:
        longest = max(len(w.input_ids) for w in batch)
        # Few distinct shapes: compiled graphs and per-shape attention plans get reused.
        bucketed = loaded.compiled or loaded.device.type == "cuda"
        width = bucket_length(longest) if bucketed else longest
        # One numpy buffer per input, filled row by row: much cheaper than building nested
        # Python lists and converting them (measured as a visible share of a GPU call).
        input_ids = np.full((len(batch), width), loaded.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        with_types = "token_type_ids" in loaded.input_names
        token_type_ids = np.zeros((len(batch), width), dtype=np.int64)
        for row, window in enumerate(batch):
            length = len(window.input_ids)
            input_ids[row, :length] = window.input_ids
            attention_mask[row, :length] = 1
            if with_types and window.token_type_ids is not None:
                token_type_ids[row, :length] = window.token_type_ids
        if loaded.backend == "onnx":
            self._forward_onnx(
                loaded, batch, task, input_ids, attention_mask, token_type_ids, with_types
            )
            return
        import torch

        arrays = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_types:
            arrays["token_type_ids"] = token_type_ids
        inputs = {name: torch.from_numpy(array).to(loaded.device) for name, array in arrays.items()}
        if loaded.compiled:
            # One graph per length bucket; the batch dimension stays symbolic.
            for tensor in inputs.values():
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
        with torch.inference_mode(), attention_backends(loaded.device.type):
            logits = loaded.model(**inputs).logits.float()
        self.forward_passes += 1
        if task == "sequence":
            for window, row in zip(batch, logits.cpu().tolist(), strict=True):
                window.output = tuple(row)
        else:
            probabilities = torch.softmax(logits, dim=-1).cpu()
            for row, window in enumerate(batch):
                assert window.text_positions is not None
                window.output = probabilities[row, window.text_positions].tolist()

    def _forward_onnx(
        self,
        loaded: LoadedModel,
        batch: list[Window],
        task: Task,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
        with_types: bool,
    ) -> None:
        """The same padded arrays through the ONNX Runtime session; the same outputs."""
        logits = loaded.model.run(input_ids, attention_mask, token_type_ids if with_types else None)
        self.forward_passes += 1
        if task == "sequence":
            for window, row in zip(batch, logits.tolist(), strict=True):
                window.output = tuple(row)
        else:
            probabilities = _softmax(logits)
            for row, window in enumerate(batch):
                assert window.text_positions is not None
                window.output = probabilities[row, window.text_positions].tolist()
