"""The process-wide shared cross-encoder engine.

One :class:`CrossEncoderEngine` per :class:`~crag_integrations.config.EngineConfig`, and one
loaded model per (model, revision, device, dtype, trust_remote_code, local-files policy,
cache directory): engines that differ only in windowing or batching settings share the
weights. Every loaded model has exactly one owner thread that holds the model and its fast
tokenizer (fast tokenizers are not safe to share across threads: "Already borrowed").
Callers, sync or async, submit requests to that owner's queue and wait on a future; the
owner drains every request waiting in the queue, tokenizes them, packs all their windows
into length-sorted, token-budgeted batches, runs the forward passes and hands each caller
its own results. Concurrent callers therefore share forward passes.

Pipeline of one drain: pre-process (validate, tokenize, window) -> forward (pad, run) ->
post-process (regroup windows, merge token probabilities) -> deliver.

Example:
    >>> from crag_integrations import get_engine
    >>> engine = get_engine("cross-encoder/ms-marco-MiniLM-L6-v2")  # nothing loads yet
    >>> scores = engine.score_pairs([("what causes rain?", "Water vapour condenses.")])
    ... # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from crag_integrations.config import EngineConfig
from crag_integrations.errors import IncompatibleModelError, ModelUnavailableError
from crag_integrations.score_cache import CacheInfo, ScoreCache
from crag_integrations.types import HeadKind, ModelHead, SequenceScores, TokenScores

if TYPE_CHECKING:
    import torch

__all__ = ["CrossEncoderEngine", "get_engine", "release_engines"]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
_Task = Literal["sequence", "token"]

#: Small batches win on CPU: activations stay in cache. Measured on a 2-core x86 machine with
#: MiniLM-L6 (fp32, 50 chunks of 40-400 words per call): 2,048 tokens per batch scored 21.2
#: pairs/s, 16,384 tokens 12.8 pairs/s (sentence-transformers' batch of 32: 11.7).
_CPU_TOKEN_BUDGET = 2_048
_ACCELERATOR_TOKEN_BUDGET = 131_072
#: Upper bound on pairs coalesced into one drain, so one huge burst cannot starve the queue.
_MAX_PAIRS_PER_DRAIN = 8_192


# --------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class _LoadKey:
    """The part of an EngineConfig that decides which weights are in memory."""

    model: str
    revision: str | None
    device: str
    dtype: str
    trust_remote_code: bool
    local_files_only: bool | None
    cache_dir: str | None
    compile: bool = False


def _resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _resolve_dtype(dtype: str, device: str) -> str:
    import torch

    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.startswith("mps"):
        return "float16"
    return "float32"


def _offline_from_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _unavailable_message(key: _LoadKey, exc: BaseException) -> str:
    looks_like_path = key.model.startswith(("/", "./", "../", "~")) or os.sep * 2 in key.model
    if looks_like_path:
        return (
            f"Model directory {key.model!r} does not exist or is not a complete checkpoint "
            f"(it needs config.json, the weights and the tokenizer files): {exc}"
        )
    offline = key.local_files_only or (key.local_files_only is None and _offline_from_env())
    how = (
        "Provide it in one of these ways: (1) on a machine with hub access run "
        f"`hf download {key.model}"
        + (f" --revision {key.revision}" if key.revision else "")
        + "` and copy the Hugging Face cache (HF_HOME, by default ~/.cache/huggingface) "
        "here; (2) pass the path of a local directory that holds config.json, the weights "
        "and the tokenizer instead of the hub id"
    )
    if offline:
        how += "; (3) or allow downloads by unsetting HF_HUB_OFFLINE / local_files_only"
    state = "is not available offline" if offline else "could not be downloaded or found"
    return f"Model {key.model!r} {state}. {how}. Underlying error: {exc}"


def _windows_cover_text(
    text_offsets: Sequence[tuple[int, int]], window_offsets: Sequence[Sequence[tuple[int, int]]]
) -> bool:
    """Whether overflow windows together hold every token of the text (by char offsets)."""
    covered = {offset for window in window_offsets for offset in window}
    return all(offset in covered for offset in text_offsets)


_PROBE_QUERY = "what does the probe check"
_PROBE_TEXT = " ".join(
    f"{word} {number}" for number in range(40) for word in ("alpha", "river", "stone")
)


def _check_overflow_windows(tokenizer: Any, model_name: str) -> None:
    """Fail loudly if this tokenizer's overflow windows lose text.

    Windows come from the fast tokenizer's own overflow mechanism. Some transformers
    releases truncate the overflow of pairs (seen with 5.17.0: a 96-token text came back as
    64 tokens in two windows), which would silently truncate long documents. A long probe
    text is windowed once at load time and every one of its tokens must reappear.
    """
    text = tokenizer(_PROBE_TEXT, add_special_tokens=False, return_offsets_mapping=True)
    text_offsets = [tuple(o) for o in text["offset_mapping"]]
    query_tokens = len(tokenizer(_PROBE_QUERY, add_special_tokens=False)["input_ids"])
    room = max(8, len(text_offsets) // 4)
    encoding = tokenizer(
        _PROBE_QUERY,
        _PROBE_TEXT,
        truncation="only_second",
        max_length=query_tokens + tokenizer.num_special_tokens_to_add(pair=True) + room,
        stride=room // 4,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    windows = [
        [
            tuple(offset)
            for offset, sequence in zip(
                encoding["offset_mapping"][row], encoding.sequence_ids(row), strict=True
            )
            if sequence == 1
        ]
        for row in range(len(encoding["input_ids"]))
    ]
    if not _windows_cover_text(text_offsets, windows):
        import transformers

        raise IncompatibleModelError(
            f"The tokenizer of {model_name!r} under transformers {transformers.__version__} "
            "drops text from overflow windows, so long documents would be silently "
            "truncated. Upgrade transformers (5.23 is tested; 5.17.0 is known to do this)."
        )


def _read_head(config: Any, model_name: str) -> ModelHead:
    architectures = list(getattr(config, "architectures", None) or [])
    auto_map = dict(getattr(config, "auto_map", None) or {})
    kind: HeadKind
    if any(a.endswith("ForTokenClassification") for a in architectures) or (
        "AutoModelForTokenClassification" in auto_map
    ):
        kind = "token"
    elif any(a.endswith("ForSequenceClassification") for a in architectures) or (
        "AutoModelForSequenceClassification" in auto_map
    ):
        kind = "sequence"
    else:
        raise IncompatibleModelError(
            f"{model_name!r} declares architectures {architectures or 'none'} in config.json; "
            "crag_integrations needs a *ForSequenceClassification checkpoint (reranker or "
            "grader) or a *ForTokenClassification checkpoint (highlighter). A bi-encoder or "
            "base model must be fine-tuned into a cross-encoder first (see docs/training.md)."
        )
    num_labels = int(getattr(config, "num_labels", 0) or 0)
    raw = dict(getattr(config, "id2label", None) or {})
    id2label = tuple(str(raw.get(i, raw.get(str(i), f"LABEL_{i}"))) for i in range(num_labels))
    if not id2label:
        raise IncompatibleModelError(f"{model_name!r} has a head with no labels")
    return ModelHead(kind=kind, id2label=id2label)


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    head: ModelHead
    device: torch.device
    default_max_length: int
    input_names: tuple[str, ...]
    pad_token_id: int
    special_tokens_in_pair: int
    attention: str = "eager"
    compiled: bool = False


def _attention_candidates(device: str, dtype: str) -> list[str]:
    """Attention kernels to try, fastest first, for this device and dtype."""
    candidates = ["sdpa"]
    if device.startswith("cuda") and dtype in ("float16", "bfloat16"):
        import importlib.util

        import torch

        major, _minor = torch.cuda.get_device_capability(torch.device(device))
        if major >= 8 and importlib.util.find_spec("flash_attn") is not None:
            candidates.insert(0, "flash_attention_2")
    return candidates


def _attention_backends(device_type: str) -> contextlib.AbstractContextManager[None]:
    """Scope SDPA to kernels without per-shape planning on CUDA.

    PyTorch may pick cuDNN's attention for bf16/fp16 on recent GPUs. cuDNN builds an
    execution plan for every new (batch, length) shape, and a reranker sees a new shape on
    almost every call: measured on an H100, an unbucketed MiniLM-L6 forward ran about 4x
    slower than in float32 because of it. Flash / memory-efficient / math kernels have no
    such set-up. Scoped to our forward pass only; the process-wide setting is untouched.
    """
    if device_type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch without the scoped selector: keep its defaults
        return contextlib.nullcontext()
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(backends)


def _bucket_length(length: int) -> int:
    """Round a sequence length up to a compile bucket: multiples of 64, then powers of 2."""
    if length <= 512:
        return max(64, -(-length // 64) * 64)
    bucket = 1024
    while bucket < length:
        bucket *= 2
    return bucket


def _load(key: _LoadKey) -> _Loaded:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    hub_kwargs: dict[str, Any] = {
        "revision": key.revision,
        "trust_remote_code": key.trust_remote_code,
        "cache_dir": key.cache_dir,
    }
    if key.local_files_only is not None:
        hub_kwargs["local_files_only"] = key.local_files_only
    try:
        config = AutoConfig.from_pretrained(key.model, **hub_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(key.model, use_fast=True, **hub_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(_unavailable_message(key, exc)) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise IncompatibleModelError(
            f"{key.model!r} has no fast (Rust) tokenizer; character offsets and windows need "
            "one. Convert it with `AutoTokenizer.from_pretrained(..., from_slow=True)` and "
            "save_pretrained, then load the saved directory."
        )
    head = _read_head(config, key.model)
    _check_overflow_windows(tokenizer, key.model)
    auto_class = (
        AutoModelForTokenClassification
        if head.kind == "token"
        else AutoModelForSequenceClassification
    )
    torch_dtype = getattr(torch, key.dtype)
    model_kwargs = dict(hub_kwargs, dtype=torch_dtype)
    model = None
    attention = "default"
    try:
        for candidate in _attention_candidates(key.device, key.dtype):
            try:
                model = auto_class.from_pretrained(
                    key.model, attn_implementation=candidate, **model_kwargs
                )
            except (ValueError, ImportError) as exc:
                # The architecture has no such kernel (DeBERTa-v2 has no SDPA): try the next.
                logger.debug("%s unavailable for %s (%s)", candidate, key.model, exc)
                continue
            attention = candidate
            break
        if model is None:
            model = auto_class.from_pretrained(key.model, **model_kwargs)
    except OSError as exc:
        raise ModelUnavailableError(_unavailable_message(key, exc)) from exc
    device = torch.device(key.device)
    model.to(device)
    model.eval()

    limits = [int(getattr(config, "max_position_embeddings", 0) or 0)]
    if 0 < tokenizer.model_max_length < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    positive = [limit for limit in limits if limit > 0]
    default_max_length = min(positive) if positive else 512

    accepted = set(inspect.signature(model.forward).parameters)
    input_names = tuple(
        name
        for name in ("input_ids", "attention_mask", "token_type_ids")
        if name in accepted and (name != "token_type_ids" or name in tokenizer.model_input_names)
    )
    if key.compile:
        model = torch.compile(model)
    pad = tokenizer.pad_token_id
    return _Loaded(
        model=model,
        tokenizer=tokenizer,
        head=head,
        device=device,
        default_max_length=default_max_length,
        input_names=input_names,
        pad_token_id=int(pad) if pad is not None else 0,
        special_tokens_in_pair=int(tokenizer.num_special_tokens_to_add(pair=True)),
        attention=attention,
        compiled=key.compile,
    )


# --------------------------------------------------------------------------------------
# Requests and windows


@dataclass
class _Request:
    task: _Task
    pairs: list[Pair]
    max_length: int | None
    stride: int
    token_budget: int
    max_wait_s: float = 0.0
    max_queue: int = 1024
    future: Future[Any] = field(default_factory=Future)
    failed: bool = False

    @property
    def estimated_tokens(self) -> int:
        """A cheap upper-ish guess of the request's tokens (about 4 characters a token)."""
        return sum(len(q) + len(t) for q, t in self.pairs) // 4 + 3 * len(self.pairs)


@dataclass
class _Window:
    request: int
    pair: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    #: For token tasks: positions (in input_ids) and character offsets of the text's tokens.
    text_positions: list[int] | None = None
    text_offsets: list[tuple[int, int]] | None = None
    output: Any = None


def _encode_requests(
    loaded: _Loaded, requests: Sequence[_Request]
) -> list[list[list[_Window]] | Exception]:
    """Tokenize every request of a drain into windows, in as few tokenizer calls as possible.

    Returns, per request, one list of windows per pair, or the exception that request
    alone fails with (a query that leaves no room for text). Pairs of all requests that
    share (max_length, stride, task) go through one batched tokenizer call, which the Rust
    tokenizer parallelises; a pair's windows depend only on its own query, text, max_length
    and stride, never on what else shares the call.
    """
    tokenizer = loaded.tokenizer
    queries = sorted({query for request in requests for query, _ in request.pairs})
    query_tokens = dict(
        zip(
            queries,
            (len(ids) for ids in tokenizer(queries, add_special_tokens=False)["input_ids"]),
            strict=True,
        )
    )
    results: list[list[list[_Window]] | Exception] = []
    groups: dict[tuple[int, int, bool], list[tuple[int, int]]] = {}
    for request_index, request in enumerate(requests):
        max_length = request.max_length or loaded.default_max_length
        members: list[tuple[tuple[int, int, bool], int]] = []
        failure: Exception | None = None
        for pair_index, (query, _text) in enumerate(request.pairs):
            room = max_length - query_tokens[query] - loaded.special_tokens_in_pair
            if room < 1:
                failure = ValueError(
                    f"The query is {query_tokens[query]} tokens long, which leaves no room "
                    f"for the text within max_length={max_length}. Shorten the query or "
                    "raise max_length."
                )
                break
            # Windows must advance: at most half the text room may overlap.
            stride = min(request.stride, room // 2)
            members.append(((max_length, stride, request.task == "token"), pair_index))
        if failure is not None:
            results.append(failure)
            continue
        results.append([[] for _ in request.pairs])
        for key, pair_index in members:
            groups.setdefault(key, []).append((request_index, pair_index))

    with_types = "token_type_ids" in loaded.input_names
    for (max_length, stride, want_offsets), members_of_group in groups.items():
        pairs = [requests[r].pairs[p] for r, p in members_of_group]
        encoding = tokenizer(
            [query for query, _ in pairs],
            [text for _, text in pairs],
            truncation="only_second",
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=want_offsets,
            return_token_type_ids=with_types,
            padding=False,
        )
        for row, sample in enumerate(encoding["overflow_to_sample_mapping"]):
            request_index, pair_index = members_of_group[sample]
            window = _Window(
                request=request_index,
                pair=pair_index,
                input_ids=list(encoding["input_ids"][row]),
                token_type_ids=list(encoding["token_type_ids"][row]) if with_types else None,
            )
            if want_offsets:
                sequence_ids = encoding.sequence_ids(row)
                offsets = encoding["offset_mapping"][row]
                positions = [p for p, s in enumerate(sequence_ids) if s == 1]
                window.text_positions = positions
                window.text_offsets = [(int(offsets[p][0]), int(offsets[p][1])) for p in positions]
            encoded = results[request_index]
            assert not isinstance(encoded, Exception)
            encoded[pair_index].append(window)
    return results


def _pack_batches(windows: Sequence[_Window], token_budget: int) -> list[list[_Window]]:
    """Sort windows longest first and pack them so batch_size x longest <= token_budget."""
    ordered = sorted(windows, key=lambda w: len(w.input_ids), reverse=True)
    batches: list[list[_Window]] = []
    current: list[_Window] = []
    for window in ordered:
        longest = len(current[0].input_ids) if current else len(window.input_ids)
        if current and (len(current) + 1) * longest > token_budget:
            batches.append(current)
            current = []
        current.append(window)
    if current:
        batches.append(current)
    return batches


def _merge_token_windows(windows: Sequence[_Window]) -> TokenScores:
    """Stitch overlapping windows of one text back into one token sequence (mean probs)."""
    offsets: list[tuple[int, int]] = []
    sums: list[list[float]] = []
    counts: list[int] = []
    for window in windows:
        assert window.text_offsets is not None
        probs: list[list[float]] = window.output
        window_offsets = window.text_offsets
        start = len(offsets)
        if offsets and window_offsets:
            # The window re-reads the tail of the previous one; find where it starts.
            for candidate in range(max(0, len(offsets) - len(window_offsets)), len(offsets) + 1):
                tail = offsets[candidate:]
                if window_offsets[: len(tail)] == tail:
                    start = candidate
                    break
            else:  # pragma: no cover - tokenizers always produce contiguous windows
                raise RuntimeError("overlapping windows do not line up; please report this")
        for position, (offset, prob) in enumerate(zip(window_offsets, probs, strict=True)):
            index = start + position
            if index < len(offsets):
                sums[index] = [a + b for a, b in zip(sums[index], prob, strict=True)]
                counts[index] += 1
            else:
                offsets.append(offset)
                sums.append(list(prob))
                counts.append(1)
    probabilities = tuple(
        tuple(value / count for value in total) for total, count in zip(sums, counts, strict=True)
    )
    return TokenScores(
        offsets=tuple(offsets), probabilities=probabilities, num_windows=len(windows)
    )


# --------------------------------------------------------------------------------------
# The owner of one loaded model


_STOP = object()


def _is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an accelerator out-of-memory error (worth splitting the batch)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom)


class _ModelRunner:
    """Owns one loaded model and tokenizer on one thread; requests in, results out."""

    def __init__(self, key: _LoadKey) -> None:
        self.key = key
        self.load_count = 0
        self.forward_passes = 0
        self.oom_splits = 0
        self.drains = 0
        self.cache = ScoreCache(capacity=0)
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Requests submitted but not yet taken by the owner thread (the bounded queue).
        self._pending = 0
        self._slots = threading.Condition()
        #: Lowered after an out-of-memory split, so later batches do not hit it again.
        self._budget_cap: int | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def loaded(self) -> _Loaded:
        with self._load_lock:
            if self._closed:
                raise RuntimeError("this engine was released; call get_engine() again")
            if self._loaded is None:
                self._loaded = _load(self.key)
                self.load_count += 1
                self._thread = threading.Thread(
                    target=self._serve, name=f"crag-engine:{self.key.model}", daemon=True
                )
                self._thread.start()
            return self._loaded

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    @property
    def queued(self) -> int:
        """Requests waiting for the owner thread right now."""
        return self._pending

    def _enqueue(self, request: _Request, *, block: bool) -> bool:
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

    def submit(self, request: _Request) -> Future[Any]:
        """Queue ``request``, blocking while ``max_queue`` requests are already waiting."""
        _ = self.loaded  # load on first use, in the caller's thread, exactly once
        self._enqueue(request, block=True)
        return request.future

    async def asubmit(self, request: _Request) -> Any:
        """Queue ``request`` and await its result without blocking the event loop."""
        if not self.is_loaded:
            await asyncio.to_thread(lambda: self.loaded)
        try:
            if not self._enqueue(request, block=False):
                # The queue is full: wait for a slot in a worker thread, not on the loop.
                await asyncio.to_thread(self._enqueue, request, block=True)
            # Cancelling this await cancels the concurrent future; the owner skips it.
            return await asyncio.wrap_future(request.future)
        except asyncio.CancelledError:
            request.future.cancel()
            raise

    def close(self) -> None:
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
            if isinstance(leftover, _Request) and leftover.future.set_running_or_notify_cancel():
                leftover.future.set_exception(RuntimeError("the engine was released"))
        self.cache.clear()
        loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded.device.type == "cuda":
            import torch

            del loaded
            torch.cuda.empty_cache()

    # -- owner thread ------------------------------------------------------------------

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        """Take ``first`` plus what arrives within its max wait, up to one token budget."""
        requests = [first]
        pairs = len(first.pairs)
        tokens = first.estimated_tokens
        deadline = time.monotonic() + first.max_wait_s
        stop_after = False
        while pairs < _MAX_PAIRS_PER_DRAIN:
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

    def _process(self, requests: list[_Request]) -> None:
        loaded = self._loaded
        assert loaded is not None
        per_request: list[list[list[_Window]] | None] = []
        all_windows: list[_Window] = []
        for request, encoded in zip(requests, _encode_requests(loaded, requests), strict=True):
            if isinstance(encoded, Exception):
                request.failed = True
                request.future.set_exception(encoded)
                per_request.append(None)
                continue
            per_request.append(encoded)
            all_windows.extend(window for pair_windows in encoded for window in pair_windows)

        token_budget = min(r.token_budget for r in requests)
        if self._budget_cap is not None:
            token_budget = min(token_budget, self._budget_cap)
        for batch in _pack_batches(all_windows, token_budget):
            if all(requests[w.request].failed for w in batch):
                continue
            try:
                self._forward_splitting(loaded, batch, requests[batch[0].request].task)
            except Exception as exc:
                for owner in {w.request for w in batch}:
                    if not requests[owner].failed:
                        requests[owner].failed = True
                        requests[owner].future.set_exception(exc)

        for request, request_windows in zip(requests, per_request, strict=True):
            if request.failed or request_windows is None:
                continue
            results: list[Any]
            if request.task == "sequence":
                results = [
                    SequenceScores(window_logits=tuple(w.output for w in pair_windows))
                    for pair_windows in request_windows
                ]
            else:
                results = [_merge_token_windows(pair_windows) for pair_windows in request_windows]
            request.future.set_result(results)

    def _forward_splitting(self, loaded: _Loaded, batch: list[_Window], task: _Task) -> None:
        """Run ``batch``; on out-of-memory, free the cache, halve it and retry each half."""
        try:
            self._forward(loaded, batch, task)
            return
        except Exception as exc:
            if len(batch) < 2 or not _is_out_of_memory(exc):
                raise
        # Retry only after leaving the except block: while an exception is being handled its
        # traceback keeps the failed pass's frames, and so its activations, alive.
        import torch

        if loaded.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        self.oom_splits += 1
        self._budget_cap = half * max(len(w.input_ids) for w in batch)
        logger.warning(
            "Out of memory on a batch of %d windows; retrying as two batches of %d and "
            "capping later batches at %d tokens",
            len(batch),
            half,
            self._budget_cap,
        )
        self._forward_splitting(loaded, batch[:half], task)
        self._forward_splitting(loaded, batch[half:], task)

    def _forward(self, loaded: _Loaded, batch: list[_Window], task: _Task) -> None:
        import torch

        longest = max(len(w.input_ids) for w in batch)
        # Few distinct shapes: compiled graphs and per-shape attention plans get reused.
        bucketed = loaded.compiled or loaded.device.type == "cuda"
        width = _bucket_length(longest) if bucketed else longest
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
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_types:
            arrays["token_type_ids"] = token_type_ids
        inputs = {name: torch.from_numpy(array).to(loaded.device) for name, array in arrays.items()}
        if loaded.compiled:
            # One graph per length bucket; the batch dimension stays symbolic.
            for tensor in inputs.values():
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
        with torch.inference_mode(), _attention_backends(loaded.device.type):
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


# --------------------------------------------------------------------------------------
# Public engine


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

    def __init__(self, config: EngineConfig, runner: _ModelRunner) -> None:
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
        return _CPU_TOKEN_BUDGET if self.device == "cpu" else _ACCELERATOR_TOKEN_BUDGET

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

    def _check_head(self, task: _Task) -> None:
        head = self.head
        if head.kind != task:
            wanted = "sequence-classification" if task == "sequence" else "token-classification"
            raise IncompatibleModelError(
                f"{self.config.model!r} has a {head.kind}-classification head, but this call "
                f"needs a {wanted} head."
            )

    def require_one_logit(self, needed_by: str, instead: str) -> None:
        """Refuse a model that is not a one-logit reranker before any score is misread.

        Args:
            needed_by: Who needs the single relevance logit (for the message).
            instead: What to use for other heads (for the message).

        Raises:
            IncompatibleModelError: The head is a token head or has more than one label.
        """
        head = self.head
        if head.kind != "sequence" or head.num_labels != 1:
            raise IncompatibleModelError(
                f"{self.config.model!r} has a {head.kind}-classification head with "
                f"{head.num_labels} labels; {needed_by} needs a one-logit cross-encoder "
                f"(sequence classification). {instead}"
            )

    def _plan(
        self, task: _Task, pairs: Sequence[Pair], max_length: int | None, stride: int | None
    ) -> tuple[_Plan, _Request | None]:
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
        request = _Request(
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
        self, task: _Task, pairs: Sequence[Pair], max_length: int | None, stride: int | None
    ) -> list[Any]:
        plan, request = self._plan(task, pairs, max_length, stride)
        if request is None:
            return plan.results
        return self._complete(plan, self._runner.submit(request).result())

    async def _arun(
        self, task: _Task, pairs: Sequence[Pair], max_length: int | None, stride: int | None
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


_REGISTRY_LOCK = threading.Lock()
_ENGINES: dict[EngineConfig, CrossEncoderEngine] = {}
_RUNNERS: dict[_LoadKey, _ModelRunner] = {}


def get_engine(config: EngineConfig | str, **overrides: Any) -> CrossEncoderEngine:
    """Return the process-wide engine for ``config``; nothing is loaded until first use.

    Args:
        config: An :class:`EngineConfig`, or a model id/path (then ``overrides`` are the
            other ``EngineConfig`` fields).
        **overrides: ``EngineConfig`` fields to replace.

    Returns:
        The same :class:`CrossEncoderEngine` object for equal configurations. Engines whose
        configurations differ only in ``max_length``, ``stride``, ``token_budget``,
        ``max_wait_ms``, ``max_queue`` or ``cache_size`` share one loaded model (and its
        score cache).

    Example:
        >>> a = get_engine("cross-encoder/ms-marco-MiniLM-L6-v2", device="cpu")
        >>> b = get_engine(EngineConfig(model="cross-encoder/ms-marco-MiniLM-L6-v2", device="cpu"))
        >>> a is b
        True
    """
    if isinstance(config, str):
        config = EngineConfig(model=config, **overrides)
    elif overrides:
        config = replace(config, **overrides)
    with _REGISTRY_LOCK:
        engine = _ENGINES.get(config)
        if engine is not None:
            return engine
        device = _resolve_device(config.device)
        key = _LoadKey(
            model=config.model,
            revision=config.revision,
            device=device,
            dtype=_resolve_dtype(config.dtype, device),
            trust_remote_code=config.trust_remote_code,
            local_files_only=config.local_files_only,
            cache_dir=config.cache_dir,
            compile=config.compile,
        )
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = _RUNNERS[key] = _ModelRunner(key)
        engine = _ENGINES[config] = CrossEncoderEngine(config, runner)
        return engine


def release_engines() -> int:
    """Stop every engine's owner thread and free its weights; returns how many were freed.

    Engines obtained earlier raise a clear error if used again; call :func:`get_engine`
    for a fresh one (the roles and adapters do this for you on their next call).
    """
    with _REGISTRY_LOCK:
        runners = list(_RUNNERS.values())
        _RUNNERS.clear()
        _ENGINES.clear()
    loaded = 0
    for runner in runners:
        loaded += int(runner.is_loaded)
        runner.close()
    return loaded


atexit.register(release_engines)
