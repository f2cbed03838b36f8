"""A served model as a scoring backend: the roles, the pipeline, CRAG and the adapters on a
deployment instead of a local model.

:class:`RemoteEngine` has the engine surface the roles use
(:class:`~crag_integrations.backends.ScoringBackend`): the head, the window length, and the
raw window logits or token probabilities of ``(query, text)`` pairs, fetched from the
application's raw routes (``POST /v1/raw/score-pairs``, ``POST /v1/raw/token-scores``,
``GET /v1/models/{name}``) over HTTP, or from the application's ingress handle inside the
cluster. Thresholds, spans and CRAG actions stay with the caller, decided by the same code
as locally, so a role on a remote engine returns what it returns on the local engine for
the same checkpoint.

Sync verbs use one ``httpx.Client``; async verbs one ``httpx.AsyncClient`` per event loop
(or ``await`` on the Ray handle), so async callers never block the loop and no thread is
started per call. Over HTTP only httpx is needed: importing this module imports no Ray.

Example:
    >>> from crag_integrations import Reranker
    >>> from crag_integrations.ray import RemoteEngine
    >>> engine = RemoteEngine("http://rerank.internal:8000", model="reranker")
    >>> Reranker(model=engine, top_n=3).rank("what causes rain?", passages)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import weakref
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'RemoteEngine needs httpx: pip install "crag-integrations[ray]" (or pip install httpx)'
    ) from exc

from crag_integrations.backends import SPEC_KEY, Pair, register_spec_kind
from crag_integrations.config import EngineConfig
from crag_integrations.errors import IncompatibleModelError
from crag_integrations.types import ModelHead, SequenceScores, TokenScores

__all__ = ["SPEC_KIND", "RemoteEngine", "RemoteEngineError"]

#: The ``backend`` kind of a URL engine's spec (see :meth:`RemoteEngine.to_spec`).
SPEC_KIND = "crag-http"

_Verb = Literal["score_pairs", "token_scores"]
_ROUTES: dict[_Verb, str] = {
    "score_pairs": "/v1/raw/score-pairs",
    "token_scores": "/v1/raw/token-scores",
}
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(EngineConfig))


class RemoteEngineError(RuntimeError):
    """The served model could not answer: unreachable, unknown model, or it failed.

    Attributes:
        status: The HTTP status, when the server answered.
        error: The server's error code (``unknown_model``, ``model_error``,
            ``unavailable``, ...), when it sent one.
    """

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None):
        super().__init__(message)
        self.status, self.error = status, error


@dataclass(frozen=True)
class _Description:
    head: ModelHead
    max_length: int
    config: EngineConfig


def _description(info: Mapping[str, Any]) -> _Description:
    config = {k: v for k, v in dict(info["config"]).items() if k in _CONFIG_FIELDS}
    return _Description(
        head=ModelHead(kind=info["head"], id2label=tuple(info["labels"])),
        max_length=int(info["max_length"]),
        config=EngineConfig(**config),
    )


def _sequence_scores(item: Mapping[str, Any]) -> SequenceScores:
    return SequenceScores(
        window_logits=tuple(tuple(float(v) for v in w) for w in item["window_logits"])
    )


def _token_scores(item: Mapping[str, Any]) -> TokenScores:
    return TokenScores(
        offsets=tuple((int(a), int(b)) for a, b in item["offsets"]),
        probabilities=tuple(tuple(float(v) for v in p) for p in item["probabilities"]),
        num_windows=int(item["num_windows"]),
        window_ranges=tuple((int(a), int(b)) for a, b in item["window_ranges"]),
        window_probabilities=tuple(
            tuple(tuple(float(v) for v in p) for p in window)
            for window in item["window_probabilities"]
        ),
    )


def _check_sendable(pairs: Sequence[Pair]) -> list[list[str]]:
    """The pairs as JSON-ready lists; a lone surrogate fails here, naming its pair, as the
    local engine fails it (it cannot be encoded, so it cannot be sent)."""
    clean = []
    for index, (query, text) in enumerate(pairs):
        for part, value in (("query", query), ("text", text)):
            try:
                str(value).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"pairs[{index}]: the {part} has a lone surrogate at character "
                    f"{exc.start}, which is not valid Unicode and cannot be tokenized; remove "
                    "or replace it before scoring"
                ) from None
        clean.append([str(query), str(text)])
    return clean


# --------------------------------------------------------------------------------------
# Transports


@dataclass(frozen=True)
class _LoopClient:
    """One event loop's client and the generator that closes it with the loop."""

    client: httpx.AsyncClient
    closer: AsyncGenerator[None, None]


class _HttpTransport:
    """The application's raw routes over HTTP."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        # An AsyncClient's connections belong to the loop that opened them: one per loop,
        # with the async generator that closes it when the loop shuts down (below).
        self._aclients: dict[asyncio.AbstractEventLoop, _LoopClient] = {}

    def _sync(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(base_url=self.url, timeout=self.timeout)
                # Engines are often dropped without close() (rebuilt from a spec, copied):
                # their connections close when they are collected.
                weakref.finalize(self, self._client.close)
            return self._client

    async def _async(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        owned = self._aclients.get(loop)
        if owned is None:
            # Loops closed without shutting down their async generators leave clients that
            # can no longer be closed; forget them (their connections go with them).
            for closed in [other for other in self._aclients if other.is_closed()]:
                del self._aclients[closed]
            client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout)
            owned = self._aclients[loop] = _LoopClient(client, self._closer(loop, client))
            await anext(owned.closer)
        return owned.client

    async def _closer(
        self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient
    ) -> AsyncGenerator[None, None]:
        # Started once per loop and never resumed: the loop's shutdown_asyncgens()
        # (asyncio.run, every async framework's runner) finalises it, and so closes the
        # client on the loop that owns its connections before that loop closes.
        try:
            yield
        finally:
            if self._aclients.get(loop) is not None and self._aclients[loop].client is client:
                del self._aclients[loop]
            await client.aclose()

    def _answer(self, response: httpx.Response, what: str) -> Any:
        if response.is_success:
            return response.json()
        try:
            body = response.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        error, message = body.get("error"), body.get("message") or response.text[:500]
        if error == "incompatible_model":
            raise IncompatibleModelError(message)
        raise RemoteEngineError(
            f"{what} at {self.url} failed with HTTP {response.status_code}"
            f"{f' ({error})' if error else ''}: {message}",
            status=response.status_code,
            error=error,
        )

    def _unreachable(self, exc: httpx.HTTPError, what: str) -> RemoteEngineError:
        return RemoteEngineError(f"{what}: could not reach {self.url}: {type(exc).__name__}: {exc}")

    def describe(self, model: str) -> Mapping[str, Any]:
        what = f"describing model {model!r}"
        try:
            response = self._sync().get(f"/v1/models/{model}")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from exc
        answer: Mapping[str, Any] = self._answer(response, what)
        return answer

    async def adescribe(self, model: str) -> Mapping[str, Any]:
        what = f"describing model {model!r}"
        try:
            response = await (await self._async()).get(f"/v1/models/{model}")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from exc
        answer: Mapping[str, Any] = self._answer(response, what)
        return answer

    @staticmethod
    def _body(model: str, pairs: Sequence[Pair], max_length: int | None, stride: int | None) -> Any:
        return {
            "model": model,
            "pairs": _check_sendable(pairs),
            "max_length": max_length,
            "stride": stride,
        }

    @staticmethod
    def _decode(verb: _Verb, answer: Mapping[str, Any]) -> list[Any]:
        decode = _sequence_scores if verb == "score_pairs" else _token_scores
        return [decode(item) for item in answer["results"]]

    def score(
        self,
        verb: _Verb,
        model: str,
        pairs: Sequence[Pair],
        max_length: int | None,
        stride: int | None,
    ) -> list[Any]:
        what = f"{verb} on model {model!r}"
        body = self._body(model, pairs, max_length, stride)
        try:
            response = self._sync().post(_ROUTES[verb], json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from exc
        return self._decode(verb, self._answer(response, what))

    async def ascore(
        self,
        verb: _Verb,
        model: str,
        pairs: Sequence[Pair],
        max_length: int | None,
        stride: int | None,
    ) -> list[Any]:
        what = f"{verb} on model {model!r}"
        body = self._body(model, pairs, max_length, stride)
        try:
            response = await (await self._async()).post(_ROUTES[verb], json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from exc
        return self._decode(verb, self._answer(response, what))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        owned = self._aclients.pop(asyncio.get_running_loop(), None)
        if owned is not None:
            await owned.closer.aclose()


def _unwrap(exc: BaseException) -> BaseException:
    """The exception the replica raised, out of Ray's wrappers (its ``cause`` chain)."""
    while True:
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            return exc
        exc = cause


class _HandleTransport:
    """The application's ingress handle (``serve.run``'s result or ``serve.get_app_handle``):
    ``call(model, verb, ...)``, retried by the ingress when a replica dies."""

    def __init__(self, handle: Any, timeout: float) -> None:
        self.handle = handle
        self.timeout = timeout

    def _result(self, response: Any) -> Any:
        import ray.exceptions

        try:
            return response.result(timeout_s=self.timeout)
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from exc

    async def _await(self, response: Any) -> Any:
        import ray.exceptions

        try:
            return await response
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from exc

    def describe(self, model: str) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = self._result(self.handle.call.remote(model, "describe"))
        return answer

    async def adescribe(self, model: str) -> Mapping[str, Any]:
        answer: Mapping[str, Any] = await self._await(self.handle.call.remote(model, "describe"))
        return answer

    def score(
        self,
        verb: _Verb,
        model: str,
        pairs: Sequence[Pair],
        max_length: int | None,
        stride: int | None,
    ) -> list[Any]:
        clean = _check_sendable(pairs)
        response = self.handle.call.remote(model, verb, clean, max_length=max_length, stride=stride)
        answer: list[Any] = self._result(response)
        return answer

    async def ascore(
        self,
        verb: _Verb,
        model: str,
        pairs: Sequence[Pair],
        max_length: int | None,
        stride: int | None,
    ) -> list[Any]:
        clean = _check_sendable(pairs)
        response = self.handle.call.remote(model, verb, clean, max_length=max_length, stride=stride)
        answer: list[Any] = await self._await(response)
        return answer

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------------------
# The backend


class RemoteEngine:
    """A model served by :func:`~crag_integrations.ray.build_app`, as a scoring backend.

    Give it to any role, stage or adapter as ``model``; they score on the served model and
    decide exactly as on a local engine. Constructing it sends nothing: the head, window
    length and engine configuration are asked of the server on first use (or by
    :meth:`load` / :meth:`aload`) and then kept.

    Args:
        url: The application's base URL (``http://host:8000``), or ``None`` with ``handle``.
        model: The served model's name (its ``ServedModel.name``).
        handle: Inside the cluster, the application's ingress handle instead of a URL
            (``serve.get_app_handle(app_name)``, or what ``serve.run`` returns); requests
            whose replica died are retried by the ingress, as over HTTP.
        timeout: Seconds to wait for one answer.

    Raises:
        ValueError: Neither or both of ``url`` and ``handle``, a URL that is not
            ``http(s)://``, or an empty model name.

    Errors of a call: :class:`RemoteEngineError` over HTTP (unreachable server, unknown
    model, a failure in the model, with the server's reason), or
    :class:`~crag_integrations.errors.IncompatibleModelError` for a head that cannot do
    what was asked; over a handle, the exception the replica raised.

    Serialisation: a URL engine pickles and dumps (:meth:`to_spec`) as its URL, model and
    timeout, and is equal to another with the same; a handle engine pickles with its handle
    and has no spec.

    Example:
        >>> engine = RemoteEngine("http://127.0.0.1:8000", model="reranker")
        >>> engine
        RemoteEngine('http://127.0.0.1:8000', model='reranker')
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        model: str,
        handle: Any = None,
        timeout: float = 120.0,
    ) -> None:
        if (url is None) == (handle is None):
            raise ValueError("give RemoteEngine either a url or a handle (exactly one)")
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, not {url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError("model must be the served model's name (a non-empty string)")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.url = None if url is None else url.rstrip("/")
        self.model = model
        self.handle = handle
        self.timeout = float(timeout)
        self._transport: _HttpTransport | _HandleTransport = (
            _HttpTransport(self.url, self.timeout)
            if self.url is not None
            else _HandleTransport(handle, self.timeout)
        )
        self._described: _Description | None = None

    def __repr__(self) -> str:
        where = repr(self.url) if self.url is not None else "handle=..."
        return f"RemoteEngine({where}, model={self.model!r})"

    def _key(self) -> tuple[Any, ...]:
        if self.url is not None:
            return (self.url, self.model, self.timeout)
        handle = (
            getattr(self.handle, "app_name", None),
            getattr(self.handle, "deployment_name", None),
        )
        return (handle, self.model, self.timeout)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RemoteEngine):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple[Any, ...]:
        # Clients and the cached description are rebuilt on first use after unpickling.
        return (_rebuild, (self.url, self.model, self.handle, self.timeout))

    def to_spec(self) -> dict[str, Any] | None:
        """This engine as plain data (``None`` for a handle engine, which has none).

        Example:
            >>> RemoteEngine("http://h:8000", model="rr").to_spec()["url"]
            'http://h:8000'
        """
        if self.url is None:
            return None
        return {
            SPEC_KEY: SPEC_KIND,
            "module": __name__,
            "url": self.url,
            "model": self.model,
            "timeout": self.timeout,
        }

    # -- the served model ----------------------------------------------------------------

    def _description(self) -> _Description:
        described = self._described
        if described is None:
            described = self._described = _description(self._transport.describe(self.model))
        return described

    @property
    def config(self) -> EngineConfig:
        """The served engine's configuration (asked of the server once)."""
        return self._description().config

    @property
    def head(self) -> ModelHead:
        """The served model's head (asked of the server once)."""
        return self._description().head

    @property
    def max_length(self) -> int:
        """The served engine's tokens per window (asked of the server once)."""
        return self._description().max_length

    @property
    def is_loaded(self) -> bool:
        """Whether the served model has been described (and so is loaded on the server)."""
        return self._described is not None

    def load(self) -> ModelHead:
        """Ask the server for the model now (it loads it if needed); return the head."""
        return self._description().head

    async def aload(self) -> ModelHead:
        """Async :meth:`load`."""
        described = self._described
        if described is None:
            described = self._described = _description(await self._transport.adescribe(self.model))
        return described.head

    # -- scoring -------------------------------------------------------------------------

    def _checked(self, results: list[Any], pairs: Sequence[Pair]) -> list[Any]:
        if len(results) != len(pairs):
            raise RemoteEngineError(
                f"{self!r} answered {len(results)} results for {len(pairs)} pairs"
            )
        return results

    def score_pairs(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[SequenceScores]:
        """Raw window logits of each pair, from the served engine, in input order."""
        if not pairs:
            return []
        results = self._transport.score("score_pairs", self.model, pairs, max_length, stride)
        return self._checked(results, pairs)

    async def ascore_pairs(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[SequenceScores]:
        """Async :meth:`score_pairs` (awaits the server; blocks no loop, starts no thread)."""
        if not pairs:
            return []
        results = await self._transport.ascore("score_pairs", self.model, pairs, max_length, stride)
        return self._checked(results, pairs)

    def token_scores(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[TokenScores]:
        """Per-token probabilities of each pair's text, window by window, in input order."""
        if not pairs:
            return []
        results = self._transport.score("token_scores", self.model, pairs, max_length, stride)
        return self._checked(results, pairs)

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
        results = await self._transport.ascore(
            "token_scores", self.model, pairs, max_length, stride
        )
        return self._checked(results, pairs)

    def close(self) -> None:
        """Close the sync HTTP client (a later call opens a new one)."""
        self._transport.close()

    async def aclose(self) -> None:
        """Close this event loop's async HTTP client (a later call opens a new one)."""
        await self._transport.aclose()


def _rebuild(url: str | None, model: str, handle: Any, timeout: float) -> RemoteEngine:
    return RemoteEngine(url, model=model, handle=handle, timeout=timeout)


def _from_spec(*, url: str, model: str, timeout: float = 120.0) -> RemoteEngine:
    return RemoteEngine(url, model=model, timeout=timeout)


register_spec_kind(SPEC_KIND, _from_spec)
