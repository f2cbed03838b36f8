"""HTTP routes over the served models: Cohere rerank, TEI rerank, and our own JSON routes.

=========================  ==================================================================
``POST /v2/rerank``        Cohere v2 rerank (``cohere.ClientV2``, langchain-cohere,
                           llama-index-postprocessor-cohere-rerank)
``POST /v1/rerank``        Cohere v1 rerank (documents may be ``{"text": ...}`` objects)
``POST /rerank``           Text Embeddings Inference rerank (llama-index-postprocessor-tei-rerank)
``POST /v1/grade``         relevance grades: label, probability, verdict, label distribution
``POST /v1/highlight``     evidence: character spans, trimmed text, sentence scores
``POST /v1/crag/evaluate`` CRAG action with each document's score and band
``GET /v1/models``         served models (head kind, labels, window length, device)
``GET /v1/models/{name}``  one served model, with its whole engine configuration
``POST /v1/raw/score-pairs``   raw window logits of (query, text) pairs
``POST /v1/raw/token-scores``  raw per-token probabilities, window by window
``GET /health``            liveness
=========================  ==================================================================

The raw routes are what :class:`~crag_integrations.ray.remote.RemoteEngine` calls: they
return the engine's outputs unchanged (floats survive JSON exactly), so the caller's roles
decide thresholds, spans and CRAG actions exactly as they do locally.

The schema page is FastAPI's: ``/docs`` and ``/openapi.json``. Scores equal the local
roles' exactly: Cohere's ``relevance_score`` is the reranker's probability (sigmoid of
the logit), TEI's ``score`` is the same probability, or the raw logit with
``raw_scores``. Texts are never truncated (long texts are scored window by window), so
Cohere's ``max_tokens_per_doc`` and TEI's ``truncate`` are accepted and have no effect.

Errors are JSON ``{"error": ..., "field": ..., "message": ...}``: 422 for a malformed
request (``field`` is its dotted location, e.g. ``documents.1``), 404 for an unknown
``model``, 422 when the model cannot do what was asked (``field`` is ``model``), 503
when no replica could answer in time, and 500 with the reason when the model failed.
A failure concerns its own request only; others batched with it are answered normally.
"""

from __future__ import annotations

import importlib.metadata
import logging
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from crag_integrations.config import EngineConfig
from crag_integrations.crag import CragEvaluation
from crag_integrations.errors import IncompatibleModelError
from crag_integrations.ray.model_server import UnknownModelError, build_role
from crag_integrations.types import Grade, Highlight, RankedText

__all__ = ["Backend", "BackendUnavailableError", "create_app"]

logger = logging.getLogger(__name__)


class BackendUnavailableError(RuntimeError):
    """No replica could answer within the retry deadline (HTTP 503)."""


class Backend(Protocol):
    """Where the routes send work: in-process servers, or Serve deployment handles."""

    def model_names(self) -> list[str]:
        """Served model names; the first is the default (TEI has no model field)."""
        ...

    def engine_config(self, model: str) -> EngineConfig:
        """The config served as ``model``; raises :class:`UnknownModelError`."""
        ...

    async def call(self, model: str, verb: str, /, *args: Any, **kwargs: Any) -> Any:
        """Await ``verb`` (a :class:`ModelServer` method) on ``model``."""
        ...


# --------------------------------------------------------------------------------------
# Schemas

Query = Annotated[str, Field(min_length=1, description="The search query.")]
Texts = Annotated[list[str], Field(description="Texts to score against the query.")]


class _Compatible(BaseModel):
    # Compatible APIs ignore fields they do not use: clients send options of their own.
    model_config = ConfigDict(extra="ignore")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CohereDocument(_Compatible):
    """A v1 document object; only ``text`` is read."""

    text: str


class CohereRerankRequest(_Compatible):
    """Cohere's rerank request (v1 and v2)."""

    model: str = Field(description="A served model name (see GET /v1/models).")
    query: Query
    documents: list[str | CohereDocument] = Field(
        description="Strings (v1 and v2) or {'text': ...} objects (v1)."
    )
    top_n: int | None = Field(default=None, ge=1, description="Return the best N (all if unset).")
    return_documents: bool = Field(default=False, description="Echo each document's text.")
    max_tokens_per_doc: int | None = Field(
        default=None, description="Accepted for compatibility; long texts are windowed, not cut."
    )


class CohereResultDocument(BaseModel):
    """The echoed document."""

    text: str


class CohereResult(BaseModel):
    """One reranked document: its input position and relevance in [0, 1]."""

    index: int
    relevance_score: float
    document: CohereResultDocument | None = None


class CohereApiVersion(BaseModel):
    """Cohere's ``meta.api_version``."""

    version: str


class CohereBilledUnits(BaseModel):
    """Cohere's ``meta.billed_units`` (one search unit per request)."""

    search_units: int = 1


class CohereMeta(BaseModel):
    """Cohere's ``meta`` block."""

    api_version: CohereApiVersion
    billed_units: CohereBilledUnits = Field(default_factory=CohereBilledUnits)


class CohereRerankResponse(BaseModel):
    """Cohere's rerank response: results best first."""

    id: str
    results: list[CohereResult]
    meta: CohereMeta


class TeiRerankRequest(_Compatible):
    """Text Embeddings Inference's ``/rerank`` request."""

    query: Query
    texts: Texts
    raw_scores: bool = Field(default=False, description="Raw logits instead of sigmoid.")
    return_text: bool = Field(default=False, description="Echo each text.")
    truncate: bool = Field(default=False, description="Accepted; long texts are windowed.")


class TeiRank(BaseModel):
    """One TEI result: input position, score, and the text when asked."""

    index: int
    score: float
    text: str | None = None


class GradeRequest(_Strict):
    """Grade each text relevant or not (see ``RelevanceGrader``)."""

    model: str = Field(description="A served model name.")
    query: Query
    texts: Texts
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    relevant_labels: list[str] | None = Field(
        default=None, description="Labels that mean relevant (multi-class graders)."
    )


class GradeResult(BaseModel):
    """One grade, in input order."""

    index: int
    label: str
    probability: float
    relevant: bool
    distribution: dict[str, float]
    num_windows: int


class GradeResponse(BaseModel):
    """Grades in input order."""

    model: str
    results: list[GradeResult]


class HighlightRequest(_Strict):
    """Find evidence spans in each text (see ``EvidenceHighlighter``)."""

    model: str = Field(description="A served model (token classifier).")
    query: Query
    texts: Texts
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    min_span_chars: int | None = Field(default=None, ge=0)
    merge_gap_chars: int | None = Field(default=None, ge=0)
    return_sentence_scores: bool | None = None
    separator: str | None = None


class SpanModel(BaseModel):
    """A character span: ``text == source[start:end]``."""

    start: int
    end: int
    text: str
    score: float


class HighlightResult(BaseModel):
    """One text's evidence, in input order."""

    index: int
    spans: list[SpanModel]
    trimmed_text: str
    sentences: list[SpanModel] | None
    num_windows: int


class HighlightResponse(BaseModel):
    """Highlights in input order."""

    model: str
    results: list[HighlightResult]


class EvaluateRequest(_Strict):
    """Decide the CRAG action for retrieved texts (see ``CragEvaluator``)."""

    model: str = Field(description="A served reranker or grader.")
    query: Query
    texts: Texts
    upper: float | None = None
    lower: float | None = None
    scale: Literal["probability", "logit"] | None = None
    relevant_labels: list[str] | None = None


class EvaluateResponse(BaseModel):
    """The action, and each document's score and band, in input order."""

    model: str
    action: Literal["correct", "ambiguous", "incorrect"]
    scores: list[float]
    document_actions: list[Literal["correct", "ambiguous", "incorrect"]]
    upper: float
    lower: float
    scale: Literal["probability", "logit"]


class ModelInfo(BaseModel):
    """A served model."""

    name: str
    model: str
    head: Literal["sequence", "token"]
    labels: list[str]
    max_length: int
    device: str


class ModelsResponse(BaseModel):
    """Every served model."""

    models: list[ModelInfo]


class ModelDetail(ModelInfo):
    """A served model and the engine configuration it runs (``EngineConfig`` fields)."""

    config: dict[str, Any]


class RawRequest(_Strict):
    """(query, text) pairs for the engine itself: no role, no decision."""

    model: str = Field(description="A served model name.")
    pairs: list[tuple[str, str]] = Field(description="[query, text] pairs, scored in order.")
    max_length: int | None = Field(default=None, ge=8, description="Tokens per window.")
    stride: int | None = Field(default=None, ge=0, description="Overlap between windows.")


class _FromAttributes(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RawSequenceScores(_FromAttributes):
    """One pair's logit vector per window (``SequenceScores``)."""

    window_logits: list[list[float]]


class RawScorePairsResponse(BaseModel):
    """The window logits of every pair, in input order."""

    model: str
    results: list[RawSequenceScores]


class RawTokenScores(_FromAttributes):
    """One pair's token offsets and probabilities, pooled and per window (``TokenScores``)."""

    offsets: list[tuple[int, int]]
    probabilities: list[list[float]]
    num_windows: int
    window_ranges: list[tuple[int, int]]
    window_probabilities: list[list[list[float]]]


class RawTokenScoresResponse(BaseModel):
    """The token scores of every pair, in input order."""

    model: str
    results: list[RawTokenScores]


class ErrorResponse(BaseModel):
    """Every error: what went wrong, which field (if one), and the reason."""

    error: str
    field: str | None = None
    message: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (404, 422, 500, 503)
}


# --------------------------------------------------------------------------------------
# Error handling


class _ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.field = status, error, message, field


def _error(status: int, error: str, message: str, field: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=error, field=field, message=message)
    return JSONResponse(status_code=status, content=body.model_dump())


def _root_cause(exc: BaseException) -> BaseException:
    # Ray wraps a replica's exception; its ``cause`` is the original, whose message is
    # the reason to report (the wrapper's message repeats the whole remote traceback).
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        locations = [[str(p) for p in e.get("loc", ()) if p != "body"] for e in errors]
        # A union (``str | CohereDocument``) reports one error per member, each with the
        # member's name appended; the field at fault is the locations' common prefix.
        common = locations[0] if locations else []
        for location in locations[1:]:
            size = 0
            while size < min(len(common), len(location)) and common[size] == location[size]:
                size += 1
            common = common[:size]
        field = ".".join(common) or None
        message = "; ".join(
            f"{'.'.join(location) or 'body'}: {e['msg']}"
            for location, e in zip(locations, errors, strict=True)
        )
        return _error(422, "invalid_request", message, field)

    @app.exception_handler(_ApiError)
    async def api_error(_: Request, exc: _ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.message, exc.field)


async def _call(backend: Backend, model: str, verb: str, *args: Any, **kwargs: Any) -> Any:
    try:
        return await backend.call(model, verb, *args, **kwargs)
    except UnknownModelError:
        raise _unknown_model(backend, model) from None
    except BackendUnavailableError as exc:
        raise _ApiError(503, "unavailable", str(exc)) from exc
    except Exception as exc:
        cause = _root_cause(exc)
        if isinstance(cause, IncompatibleModelError):
            raise _ApiError(422, "incompatible_model", str(cause), "model") from exc
        if isinstance(cause, UnknownModelError):
            raise _unknown_model(backend, model) from None
        logger.exception("%s on model %r failed", verb, model)
        message = f"{type(cause).__name__}: {cause}"
        raise _ApiError(500, "model_error", message) from exc


def _unknown_model(backend: Backend, model: str) -> _ApiError:
    served = ", ".join(repr(n) for n in backend.model_names())
    return _ApiError(404, "unknown_model", f"model {model!r} is not served; use {served}", "model")


def _check_options(backend: Backend, model: str, verb: str, options: dict[str, Any]) -> None:
    """Build the role here so a bad option is a 422 before any replica is involved."""
    try:
        config = backend.engine_config(model)
    except UnknownModelError:
        raise _unknown_model(backend, model) from None
    try:
        build_role(config, verb, options)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        # The option the message names first is the one at fault ("lower (..) must not
        # exceed upper (..)" is about lower).
        named = sorted((message.find(name), name) for name in options if name in message)
        raise _ApiError(422, "invalid_request", message, named[0][1] if named else None) from exc


# --------------------------------------------------------------------------------------
# Routes


def _cohere_texts(documents: Sequence[str | CohereDocument]) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in documents]


def _cohere_response(
    ranked: Sequence[RankedText], texts: Sequence[str], *, echo: bool, version: str
) -> CohereRerankResponse:
    results = [
        CohereResult(
            index=r.index,
            relevance_score=r.probability,
            document=CohereResultDocument(text=texts[r.index]) if echo else None,
        )
        for r in ranked
    ]
    return CohereRerankResponse(
        id=str(uuid.uuid4()),
        results=results,
        meta=CohereMeta(api_version=CohereApiVersion(version=version)),
    )


def _grade_result(grade: Grade) -> GradeResult:
    return GradeResult(
        index=grade.index,
        label=grade.label,
        probability=grade.probability,
        relevant=grade.relevant,
        distribution=dict(grade.distribution),
        num_windows=grade.num_windows,
    )


def _highlight_result(highlight: Highlight) -> HighlightResult:
    return HighlightResult(
        index=highlight.index,
        spans=[
            SpanModel(start=s.start, end=s.end, text=s.text, score=s.score) for s in highlight.spans
        ],
        trimmed_text=highlight.trimmed_text,
        sentences=None
        if highlight.sentences is None
        else [
            SpanModel(start=s.start, end=s.end, text=s.text, score=s.score)
            for s in highlight.sentences
        ],
        num_windows=highlight.num_windows,
    )


def _package_version() -> str:
    try:
        return importlib.metadata.version("crag-integrations")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def create_app(backend: Backend, *, title: str = "crag-integrations") -> FastAPI:
    """The FastAPI application serving ``backend``'s models.

    Args:
        backend: :class:`~crag_integrations.ray.model_server.LocalBackend` (in-process) or
            the Serve ingress's deployment handles.
        title: The OpenAPI page's title.

    Example:
        >>> from crag_integrations.ray.model_server import LocalBackend
        >>> app = create_app(LocalBackend({"rr": EngineConfig(model="path/to/reranker")}))
        >>> sorted(r.path for r in app.routes if "rerank" in r.path)
        ['/rerank', '/v1/rerank', '/v2/rerank']
    """
    app = FastAPI(
        title=title,
        version=_package_version(),
        description="Rerank (Cohere- and TEI-compatible), grade, highlight and CRAG-evaluate.",
    )
    _install_error_handlers(app)

    async def cohere_rerank(request: CohereRerankRequest, version: str) -> CohereRerankResponse:
        texts = _cohere_texts(request.documents)
        ranked = await _call(
            backend, request.model, "rerank", request.query, texts, top_n=request.top_n
        )
        return _cohere_response(ranked, texts, echo=request.return_documents, version=version)

    @app.post("/v2/rerank", response_model_exclude_none=True, tags=["cohere"], responses=_ERRORS)
    async def rerank_v2(request: CohereRerankRequest) -> CohereRerankResponse:
        """Cohere v2 rerank: results best first, ``relevance_score`` in [0, 1]."""
        return await cohere_rerank(request, "2")

    @app.post("/v1/rerank", response_model_exclude_none=True, tags=["cohere"], responses=_ERRORS)
    async def rerank_v1(request: CohereRerankRequest) -> CohereRerankResponse:
        """Cohere v1 rerank: as v2, documents may also be ``{"text": ...}`` objects."""
        return await cohere_rerank(request, "1")

    @app.post("/rerank", response_model_exclude_none=True, tags=["tei"], responses=_ERRORS)
    async def rerank_tei(request: TeiRerankRequest) -> list[TeiRank]:
        """TEI rerank on the default (first) model: results best first."""
        model = backend.model_names()[0]
        ranked: list[RankedText] = await _call(
            backend, model, "rerank", request.query, request.texts
        )
        return [
            TeiRank(
                index=r.index,
                score=r.score if request.raw_scores else r.probability,
                text=r.text if request.return_text else None,
            )
            for r in ranked
        ]

    @app.post("/v1/grade", tags=["crag-integrations"], responses=_ERRORS)
    async def grade(request: GradeRequest) -> GradeResponse:
        """Grade each text (input order): label, relevance probability, verdict."""
        options = {
            "threshold": request.threshold,
            "relevant_labels": None
            if request.relevant_labels is None
            else tuple(request.relevant_labels),
        }
        _check_options(backend, request.model, "grade", options)
        grades = await _call(
            backend, request.model, "grade", request.query, request.texts, **options
        )
        return GradeResponse(model=request.model, results=[_grade_result(g) for g in grades])

    @app.post("/v1/highlight", tags=["crag-integrations"], responses=_ERRORS)
    async def highlight(request: HighlightRequest) -> HighlightResponse:
        """Evidence spans of each text (input order), with sentence scores if asked."""
        options = request.model_dump(exclude={"model", "query", "texts"})
        _check_options(backend, request.model, "highlight", options)
        highlights = await _call(
            backend, request.model, "highlight", request.query, request.texts, **options
        )
        return HighlightResponse(
            model=request.model, results=[_highlight_result(h) for h in highlights]
        )

    @app.post("/v1/crag/evaluate", tags=["crag-integrations"], responses=_ERRORS)
    async def evaluate(request: EvaluateRequest) -> EvaluateResponse:
        """The CRAG action (correct / ambiguous / incorrect) and each document's band."""
        options = request.model_dump(exclude={"model", "query", "texts"})
        if options["relevant_labels"] is not None:
            options["relevant_labels"] = tuple(options["relevant_labels"])
        _check_options(backend, request.model, "evaluate", options)
        verdict: CragEvaluation = await _call(
            backend, request.model, "evaluate", request.query, request.texts, **options
        )
        return EvaluateResponse(
            model=request.model,
            action=verdict.action,
            scores=list(verdict.scores),
            document_actions=list(verdict.document_actions),
            upper=verdict.upper,
            lower=verdict.lower,
            scale=verdict.scale,
        )

    @app.get("/v1/models", tags=["crag-integrations"], responses=_ERRORS)
    async def models() -> ModelsResponse:
        """Every served model, loading it if needed."""
        infos = [await _call(backend, name, "info") for name in backend.model_names()]
        return ModelsResponse(models=[ModelInfo(**info) for info in infos])

    @app.get("/v1/models/{name}", tags=["crag-integrations"], responses=_ERRORS)
    async def model_detail(name: str) -> ModelDetail:
        """One served model and its engine configuration, loading it if needed."""
        return ModelDetail(**await _call(backend, name, "describe"))

    @app.post("/v1/raw/score-pairs", tags=["raw"], responses=_ERRORS)
    async def raw_score_pairs(request: RawRequest) -> RawScorePairsResponse:
        """The engine's window logits for each pair (a sequence-classification head)."""
        scores = await _call(
            backend,
            request.model,
            "score_pairs",
            request.pairs,
            max_length=request.max_length,
            stride=request.stride,
        )
        return RawScorePairsResponse(
            model=request.model,
            results=[RawSequenceScores.model_validate(s) for s in scores],
        )

    @app.post("/v1/raw/token-scores", tags=["raw"], responses=_ERRORS)
    async def raw_token_scores(request: RawRequest) -> RawTokenScoresResponse:
        """The engine's token probabilities for each pair (a token-classification head)."""
        scores = await _call(
            backend,
            request.model,
            "token_scores",
            request.pairs,
            max_length=request.max_length,
            stride=request.stride,
        )
        return RawTokenScoresResponse(
            model=request.model,
            results=[RawTokenScores.model_validate(s) for s in scores],
        )

    @app.get("/health", tags=["crag-integrations"])
    async def health() -> dict[str, str]:
        """Liveness of the HTTP layer (replica health is Serve's business)."""
        return {"status": "ok"}

    return app
