"""LangChain adapters: rerank, filter and trim retrieved documents as document compressors.

Every class here translates between LangChain objects and the roles and pipeline below it;
none of them decides anything itself. Sorting, thresholds, label policies, span
extraction and the CRAG action all live in :mod:`crag_integrations.roles`,
:mod:`crag_integrations.pipeline` and :mod:`crag_integrations.crag`.

- :class:`CrossEncoderRerank`: sort by a one-logit cross-encoder, threshold, cut to ``top_n``.
- :class:`RelevanceGraderFilter`: drop documents a relevance grader grades not relevant.
- :class:`EvidenceTrimmer`: replace each document's content by its evidence spans.
- :class:`CragCompressor`: rerank, filter and trim in one pass; optionally decide the CRAG
  action on the way (``action_upper`` / ``action_lower``).
- :class:`CragEvaluatorCompressor`: score every document with a
  :class:`~crag_integrations.crag.CragEvaluator` in one batched call and write the CRAG
  action (query level) and each document's own band into the metadata.
- :class:`KnowledgeRefinerTrimmer`: CRAG knowledge refinement as a model-agnostic trimmer
  (split into strips, keep the relevant ones), beside the token-classifier
  :class:`EvidenceTrimmer`.
- :class:`CragCrossEncoder`: a ``langchain_core`` ``BaseCrossEncoder`` on the shared engine,
  for LangChain's own ``CrossEncoderReranker``.

Output documents are copies: ``id`` and existing metadata are kept (metadata is deep-copied),
and results are written under ``relevance_score`` plus ``crag_*`` keys (see
``docs/langchain.md``). The caller's documents are never mutated. Each call dispatches one
LangChain custom event, :data:`COMPRESSION_EVENT`, with counts and timing (and the CRAG
action, when the compressor decides one). An agent that branches on the action can call
:meth:`CragEvaluatorCompressor.evaluate` or :meth:`CragCompressor.evaluate_action` directly
instead of reading metadata.

Only ``langchain-core`` is needed (``pip install "crag-integrations[langchain]"``).

Example:
    >>> from langchain_classic.retrievers import ContextualCompressionRetriever
    >>> from crag_integrations.langchain import CrossEncoderRerank
    >>> retriever = ContextualCompressionRetriever(
    ...     base_compressor=CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2"),
    ...     base_retriever=vector_store.as_retriever(search_kwargs={"k": 20}),
    ... )  # doctest: +SKIP
    >>> retriever.invoke("what causes rain?")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr

from crag_integrations.config import EngineConfig
from crag_integrations.crag import (
    DEFAULT_LOWER,
    DEFAULT_UPPER,
    CragAction,
    CragEvaluation,
    CragEvaluator,
    KnowledgeRefiner,
    RefinedDocument,
    ScoreScale,
    StripMode,
    decide_action,
)
from crag_integrations.pipeline import NoEvidencePolicy, RerankGradeTrimPipeline, action_scores
from crag_integrations.roles import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.types import PipelineResult, ProcessedText

_INSTALL_HINT = 'pip install -U "crag-integrations[langchain]"'

try:
    from langchain_core.callbacks import (
        AsyncCallbackManager,
        CallbackManager,
        Callbacks,
    )
    from langchain_core.cross_encoders import BaseCrossEncoder
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.runnables.config import ensure_config
except ModuleNotFoundError as exc:
    # Only a missing langchain_core (or one of its modules, i.e. a too-old version) is
    # turned into the install hint; any other missing module is a real bug and propagates.
    if exc.name is None or exc.name.split(".")[0] != "langchain_core":
        raise
    what = (
        "langchain-core is not installed"
        if exc.name == "langchain_core"
        else f"the installed langchain-core is too old (it has no {exc.name})"
    )
    raise ImportError(
        f"crag_integrations.langchain needs langchain-core >= 1.4.4, but {what}. "
        f"Install it with: {_INSTALL_HINT}"
    ) from exc

__all__ = [
    "COMPRESSION_EVENT",
    "CragCompression",
    "CragCompressor",
    "CragCrossEncoder",
    "CragEvaluatorCompressor",
    "CrossEncoderRerank",
    "EvidenceTrimmer",
    "KnowledgeRefinerTrimmer",
    "RelevanceGraderFilter",
]

#: Name of the LangChain custom event every compressor dispatches once per call. Its data
#: is a dict: ``compressor`` (class name), ``documents_in``, ``documents_out``,
#: ``documents_dropped``, ``dropped_by_reason`` (reason -> count) and ``elapsed_s``; plus
#: ``action`` (``"correct"`` / ``"ambiguous"`` / ``"incorrect"``) from the compressors that
#: decide the CRAG action.
COMPRESSION_EVENT = "crag_compression"

_MODEL_DOC = "Hub id, local checkpoint directory, or an EngineConfig (device, dtype, ...)."


def _stage_metadata(item: ProcessedText) -> dict[str, Any]:
    """The ``crag_*`` / ``relevance_score`` metadata for one kept text (translation only)."""
    metadata: dict[str, Any] = {"crag_original_index": item.index}
    windows: dict[str, int] = {}
    if item.grade is not None:
        metadata["relevance_score"] = item.grade.probability
        metadata["crag_grade_probability"] = item.grade.probability
        metadata["crag_label"] = item.grade.label
        metadata["crag_probabilities"] = dict(item.grade.distribution)
        windows["grade"] = item.grade.num_windows
    if item.ranked is not None:
        # The reranker's probability wins: output order is rerank order, and
        # relevance_score should agree with it (as in LangChain's own rerankers).
        metadata["relevance_score"] = item.ranked.probability
        metadata["crag_rerank_logit"] = item.ranked.score
        windows["rerank"] = item.ranked.num_windows
    if item.highlight is not None:
        metadata["crag_spans"] = [
            {"start": s.start, "end": s.end, "text": s.text, "score": s.score}
            for s in item.highlight.spans
        ]
        metadata["crag_trimmed"] = bool(item.highlight.spans)
        windows["highlight"] = item.highlight.num_windows
    metadata["crag_num_windows"] = windows
    return metadata


def _copied(document: Document, page_content: str, added: dict[str, Any]) -> Document:
    metadata = {**copy.deepcopy(document.metadata), **added}
    # model_copy keeps the caller's Document subclass and its id; the updated fields are
    # fresh objects, so nothing is shared with the input but immutable strings.
    return document.model_copy(update={"page_content": page_content, "metadata": metadata})


def _copy_document(
    document: Document, item: ProcessedText, action: CragAction | None = None
) -> Document:
    added = _stage_metadata(item)
    if action is not None:
        added["crag_action"] = action
    return _copied(document, item.output_text, added)


def _event_data(
    name: str,
    documents_in: int,
    documents_out: int,
    dropped_reasons: Sequence[str],
    elapsed: float,
    action: CragAction | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "compressor": name,
        "documents_in": documents_in,
        "documents_out": documents_out,
        "documents_dropped": len(dropped_reasons),
        "dropped_by_reason": dict(Counter(dropped_reasons)),
        "elapsed_s": elapsed,
    }
    if action is not None:
        data["action"] = action
    return data


def _inherited(callbacks: Callbacks | None) -> Callbacks | None:
    # Called directly inside a runnable (e.g. a RunnableLambda) without callbacks, use the
    # ambient run's callbacks so the event lands on that run, as dispatch_custom_event does.
    return callbacks if callbacks is not None else ensure_config().get("callbacks")


def _dispatch(callbacks: Callbacks | None, data: dict[str, Any]) -> None:
    manager = CallbackManager.configure(inheritable_callbacks=_inherited(callbacks))
    manager.on_custom_event(COMPRESSION_EVENT, data, run_id=manager.parent_run_id)


async def _adispatch(callbacks: Callbacks | None, data: dict[str, Any]) -> None:
    manager = AsyncCallbackManager.configure(inheritable_callbacks=_inherited(callbacks))
    await manager.on_custom_event(COMPRESSION_EVENT, data, run_id=manager.parent_run_id)


@dataclass(frozen=True, slots=True)
class CragCompression:
    """What :meth:`CragCompressor.evaluate_action` returns: the action and the documents.

    Attributes:
        action: The query's CRAG action, ``"correct"``, ``"ambiguous"`` or ``"incorrect"``.
        documents: The compressed documents, exactly what ``compress_documents`` returns.
        scores: The relevance probabilities the action was decided on (see
            :func:`crag_integrations.pipeline.action_scores`), in input order of the
            documents they belong to (kept and dropped alike).

    Example:
        >>> result = crag.evaluate_action("what causes rain?", docs)  # doctest: +SKIP
        >>> result.action, len(result.documents)  # doctest: +SKIP
        ('ambiguous', 2)
    """

    action: CragAction
    documents: tuple[Document, ...]
    scores: tuple[float, ...]


class _PipelineCompressor(BaseDocumentCompressor):
    """Shared plumbing: a pipeline built from the fields, translated to and from documents."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    _pipeline: RerankGradeTrimPipeline = PrivateAttr()

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        raise NotImplementedError

    def model_post_init(self, context: Any, /) -> None:
        """Build the (cheap, model-free) pipeline so bad settings fail at construction."""
        self._pipeline = self._build_pipeline()

    @property
    def pipeline(self) -> RerankGradeTrimPipeline:
        """The :class:`RerankGradeTrimPipeline` this compressor runs (no model loaded yet)."""
        return self._pipeline

    def _texts(self, documents: Sequence[Document]) -> list[str]:
        return [d.page_content for d in documents]

    def _action(self, result: PipelineResult) -> CragAction | None:
        """The CRAG action to report for ``result``; ``None``: this compressor decides none."""
        return None

    def _translate(
        self, documents: list[Document], result: PipelineResult, elapsed: float
    ) -> tuple[list[Document], dict[str, Any], CragAction | None]:
        action = self._action(result)
        compressed = [_copy_document(documents[item.index], item, action) for item in result.kept]
        data = _event_data(
            type(self).__name__,
            len(documents),
            len(compressed),
            [d.reason for d in result.dropped],
            elapsed,
            action,
        )
        return compressed, data, action

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Compress ``documents`` for ``query``; returns new documents, inputs untouched.

        Args:
            documents: The retrieved documents (not modified).
            query: The query they were retrieved for.
            callbacks: LangChain callbacks; each call dispatches one
                :data:`COMPRESSION_EVENT` custom event to them.

        Returns:
            Copies of the surviving documents, in the pipeline's final order, with the
            ``relevance_score`` and ``crag_*`` metadata described in the module docstring.
        """
        documents = list(documents)
        start = time.perf_counter()
        result = self._pipeline.run(query, self._texts(documents))
        compressed, data, _ = self._translate(documents, result, time.perf_counter() - start)
        _dispatch(callbacks, data)
        return compressed

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`: awaits the engine, never blocks the loop."""
        documents = list(documents)
        start = time.perf_counter()
        result = await self._pipeline.arun(query, self._texts(documents))
        compressed, data, _ = self._translate(documents, result, time.perf_counter() - start)
        await _adispatch(callbacks, data)
        return compressed


class CrossEncoderRerank(_PipelineCompressor):
    """Rerank documents with a one-logit cross-encoder (a :class:`Reranker`).

    Documents come back best first. ``score_threshold`` drops documents whose raw logit is
    below it, then the rest are cut to ``top_n``; nothing else is dropped.
    ``relevance_score`` is ``sigmoid(logit)`` in ``[0, 1]`` (what LangChain's
    ``CrossEncoderReranker`` sees from a sentence-transformers one-label cross-encoder);
    the raw logit is ``crag_rerank_logit``.

    Args:
        model: Hub id, local checkpoint directory, or an ``EngineConfig``.
        top_n: Return at most this many documents (``None``: all). LangChain's default, 3.
        score_threshold: Minimum raw logit (not probability: logit 0 is probability 0.5).

    Example:
        >>> rerank = CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=2)
        >>> docs = rerank.compress_documents(retrieved, "what causes rain?")  # doctest: +SKIP
        >>> [d.metadata["relevance_score"] for d in docs]  # doctest: +SKIP
        [0.998, 0.41]
    """

    model: str | EngineConfig = Field(description=_MODEL_DOC)
    top_n: int | None = Field(default=3, ge=0)
    score_threshold: float | None = None

    @property
    def role(self) -> Reranker:
        """The :class:`Reranker` behind this compressor."""
        assert self._pipeline.reranker is not None
        return self._pipeline.reranker

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(
            reranker=Reranker(
                model=self.model, top_n=self.top_n, score_threshold=self.score_threshold
            )
        )


class RelevanceGraderFilter(_PipelineCompressor):
    """Drop documents a relevance grader (a :class:`RelevanceGrader`) grades not relevant.

    Survivors keep their input order. A document is relevant when the grader's relevance
    probability is at least ``threshold``; ``relevant_labels`` names the classifier labels
    that count as relevant (default: the grader's rules, e.g. the positive class of a
    binary grader). ``relevance_score`` is that relevance probability; ``crag_label`` is
    the most probable label and ``crag_probabilities`` every label's probability.

    Args:
        model: Hub id, local checkpoint directory, or an ``EngineConfig``.
        threshold: Minimum relevance probability, in ``[0, 1]``.
        relevant_labels: Label names that mean relevant, or ``None`` for the default.

    Example:
        >>> keep = RelevanceGraderFilter(model="skshmjn/CRAG-ModernBert", threshold=0.5)
        >>> docs = keep.compress_documents(retrieved, "what causes rain?")  # doctest: +SKIP
        >>> [d.metadata["crag_label"] for d in docs]  # doctest: +SKIP
        ['relevant']
    """

    model: str | EngineConfig = Field(description=_MODEL_DOC)
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    relevant_labels: tuple[str, ...] | None = None

    @property
    def role(self) -> RelevanceGrader:
        """The :class:`RelevanceGrader` behind this compressor."""
        assert self._pipeline.grader is not None
        return self._pipeline.grader

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(
            grader=RelevanceGrader(
                model=self.model, threshold=self.threshold, relevant_labels=self.relevant_labels
            )
        )


class EvidenceTrimmer(_PipelineCompressor):
    """Replace each document's content by its evidence (an :class:`EvidenceHighlighter`).

    ``page_content`` becomes the evidence spans joined by ``separator``; ``crag_spans``
    lists the spans with character offsets into the *original* ``page_content``. A
    document with no evidence is kept whole (``on_no_evidence="keep"``, the default, with
    ``crag_trimmed=False``) or dropped (``"drop"``). Order is kept. This compressor writes
    no ``relevance_score``: spans are not a relevance judgement of the whole document.

    Args:
        model: Hub id, local directory, or ``EngineConfig`` of a token classifier.
        threshold: Token evidence probability cut-off (0.2 balanced, 0.5 high precision).
        max_length: Tokens per window (``None``: the model's limit).
        doc_stride: Tokens of overlap between windows of long documents.
        min_span_chars: Drop spans shorter than this.
        merge_gap_chars: Merge spans at most this many characters apart.
        separator: Joins the spans into the new ``page_content``.
        evidence_labels: Token labels that mark evidence (default: all but "outside").
        on_no_evidence: ``"keep"`` the document whole or ``"drop"`` it.

    Example:
        >>> trim = EvidenceTrimmer(model="KRLabsOrg/acl-verbatim-modernbert")
        >>> docs = trim.compress_documents(retrieved, "what is ModernBERT?")  # doctest: +SKIP
        >>> docs[0].page_content  # doctest: +SKIP
        'ModernBERT is a long-context encoder for NLP.'
    """

    model: str | EngineConfig = Field(description=_MODEL_DOC)
    threshold: float = Field(default=0.2, ge=0.0, le=1.0)
    max_length: int | None = Field(default=None, ge=8)
    doc_stride: int = Field(default=256, ge=0)
    min_span_chars: int = Field(default=10, ge=0)
    merge_gap_chars: int = Field(default=20, ge=0)
    separator: str = " ... "
    evidence_labels: tuple[str, ...] | None = None
    on_no_evidence: NoEvidencePolicy = "keep"

    @property
    def role(self) -> EvidenceHighlighter:
        """The :class:`EvidenceHighlighter` behind this compressor."""
        assert self._pipeline.highlighter is not None
        return self._pipeline.highlighter

    def _highlighter(self) -> EvidenceHighlighter:
        return EvidenceHighlighter(
            model=self.model,
            threshold=self.threshold,
            max_length=self.max_length,
            doc_stride=self.doc_stride,
            min_span_chars=self.min_span_chars,
            merge_gap_chars=self.merge_gap_chars,
            separator=self.separator,
            evidence_labels=self.evidence_labels,
        )

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(
            highlighter=self._highlighter(), on_no_evidence=self.on_no_evidence
        )


class CragCompressor(_PipelineCompressor):
    """Rerank, then filter, then trim, in one :class:`RerankGradeTrimPipeline` pass.

    Each stage is configured by the matching single-stage compressor (and is optional, but
    at least one is required): the reranker sorts, thresholds and cuts; the grader drops
    what is not relevant among the reranked survivors; the trimmer replaces the remaining
    documents' content by their evidence (its ``on_no_evidence`` applies). Metadata is
    the union of the stages' keys; ``relevance_score`` is the reranker's probability when
    a reranker is configured, else the grader's.

    With ``action_upper`` and ``action_lower`` set (both or neither), the same pass also
    decides the CRAG action (:func:`crag_integrations.crag.decide_action` over
    :func:`crag_integrations.pipeline.action_scores`: the grade probabilities of every
    graded document when a grader is configured, else the reranker probabilities of every
    document) and writes it as ``crag_action`` into every output document and into the
    event. :meth:`evaluate_action` returns the action with the documents, so an agent
    needs no second pass and still gets the action when no document survives.

    Args:
        reranker: A :class:`CrossEncoderRerank`, or ``None``.
        relevance_filter: A :class:`RelevanceGraderFilter`, or ``None``.
        trimmer: An :class:`EvidenceTrimmer`, or ``None``.
        action_upper: Relevance probability at or above which one document makes the
            action ``"correct"`` (``None``: decide no action).
        action_lower: Relevance probability below which every document must fall for
            ``"incorrect"`` (``None``: decide no action).

    Example:
        >>> crag = CragCompressor(
        ...     reranker=CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=5),
        ...     relevance_filter=RelevanceGraderFilter(model="skshmjn/CRAG-ModernBert"),
        ...     trimmer=EvidenceTrimmer(model="KRLabsOrg/acl-verbatim-modernbert"),
        ...     action_upper=0.6,
        ...     action_lower=0.2,
        ... )
        >>> result = crag.evaluate_action("what causes rain?", retrieved)  # doctest: +SKIP
        >>> result.action, [d.metadata["crag_action"] for d in result.documents]  # doctest: +SKIP
        ('correct', ['correct', 'correct'])
    """

    reranker: CrossEncoderRerank | None = None
    relevance_filter: RelevanceGraderFilter | None = None
    trimmer: EvidenceTrimmer | None = None
    action_upper: float | None = Field(default=None, ge=0.0, le=1.0)
    action_lower: float | None = Field(default=None, ge=0.0, le=1.0)

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        if self.reranker is None and self.relevance_filter is None and self.trimmer is None:
            raise ValueError(
                "CragCompressor needs at least one of reranker, relevance_filter or trimmer"
            )
        if (self.action_upper is None) != (self.action_lower is None):
            raise ValueError(
                "set both action_upper and action_lower to decide the CRAG action, or neither"
            )
        if self.action_upper is not None and self.action_lower is not None:
            if self.action_lower > self.action_upper:
                raise ValueError(
                    f"action_lower ({self.action_lower}) must not exceed "
                    f"action_upper ({self.action_upper})"
                )
            if self.reranker is None and self.relevance_filter is None:
                raise ValueError(
                    "the CRAG action is decided on relevance scores: add a reranker or a "
                    "relevance_filter, or use CragEvaluatorCompressor"
                )
        return RerankGradeTrimPipeline(
            reranker=self.reranker.role if self.reranker is not None else None,
            grader=self.relevance_filter.role if self.relevance_filter is not None else None,
            highlighter=self.trimmer.role if self.trimmer is not None else None,
            on_no_evidence=self.trimmer.on_no_evidence if self.trimmer is not None else "keep",
        )

    def _action(self, result: PipelineResult) -> CragAction | None:
        if self.action_upper is None or self.action_lower is None:
            return None
        return decide_action(
            action_scores(result), upper=self.action_upper, lower=self.action_lower
        )

    def _thresholds_required(self) -> None:
        if self.action_upper is None:
            raise ValueError(
                "evaluate_action needs action_upper and action_lower; set them on this "
                "CragCompressor (or call compress_documents for documents only)"
            )

    def evaluate_action(
        self, query: str, documents: Sequence[Document], callbacks: Callbacks | None = None
    ) -> CragCompression:
        """Compress ``documents`` and decide the CRAG action, in one pass.

        Args:
            query: The query the documents were retrieved for.
            documents: The retrieved documents (not modified).
            callbacks: LangChain callbacks for the :data:`COMPRESSION_EVENT` event.

        Returns:
            The action, the compressed documents (as :meth:`compress_documents` returns
            them) and the scores the action was decided on. No documents: ``"incorrect"``
            and nothing scored.

        Raises:
            ValueError: If ``action_upper`` / ``action_lower`` are not set.
        """
        self._thresholds_required()
        documents = list(documents)
        start = time.perf_counter()
        result = self._pipeline.run(query, self._texts(documents))
        compressed, data, action = self._translate(documents, result, time.perf_counter() - start)
        _dispatch(callbacks, data)
        assert action is not None
        return CragCompression(
            action=action, documents=tuple(compressed), scores=tuple(action_scores(result))
        )

    async def aevaluate_action(
        self, query: str, documents: Sequence[Document], callbacks: Callbacks | None = None
    ) -> CragCompression:
        """Async :meth:`evaluate_action`: awaits the engine, never blocks the loop."""
        self._thresholds_required()
        documents = list(documents)
        start = time.perf_counter()
        result = await self._pipeline.arun(query, self._texts(documents))
        compressed, data, action = self._translate(documents, result, time.perf_counter() - start)
        await _adispatch(callbacks, data)
        assert action is not None
        return CragCompression(
            action=action, documents=tuple(compressed), scores=tuple(action_scores(result))
        )


class CragEvaluatorCompressor(BaseDocumentCompressor):
    """Score every document with a :class:`~crag_integrations.crag.CragEvaluator` and write
    the CRAG action into each one, in one batched engine call.

    Every output document is a copy of an input document, in input order (nothing is
    sorted), with ``relevance_score`` (its score on ``scale``), ``crag_action`` (the
    query-level action: ``"correct"``, ``"ambiguous"`` or ``"incorrect"``),
    ``crag_document_action`` (the document's own band: ``correct`` >= ``upper``,
    ``incorrect`` < ``lower``, else ``ambiguous``) and ``crag_original_index``. By default
    every document is returned; ``drop_incorrect_documents=True`` drops those whose own
    band is ``"incorrect"``. Either way an empty output means the action is
    ``"incorrect"``. For the action without reading metadata (an agent's branch), call
    :meth:`evaluate` / :meth:`aevaluate`.

    Args:
        model: A one-logit reranker, a binary grader or a multi-class grader.
        upper: Score at or above which one document makes the action ``"correct"``.
        lower: Score below which every document must fall for ``"incorrect"``.
        scale: ``"probability"`` (any head; scores in ``[0, 1]``) or ``"logit"`` (one-logit
            rerankers; thresholds and ``relevance_score`` are raw logits).
        relevant_labels: For multi-class graders, the label names that mean relevant.
        drop_incorrect_documents: Drop documents whose own band is ``"incorrect"``.

    Example:
        >>> evaluator = CragEvaluatorCompressor(model="skshmjn/CRAG-ModernBert")
        >>> evaluator.evaluate("what causes rain?", retrieved).action  # doctest: +SKIP
        'correct'
        >>> docs = evaluator.compress_documents(retrieved, "what causes rain?")  # doctest: +SKIP
        >>> [d.metadata["crag_document_action"] for d in docs]  # doctest: +SKIP
        ['correct', 'incorrect', 'ambiguous']
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    model: str | EngineConfig = Field(description=_MODEL_DOC)
    upper: float = DEFAULT_UPPER
    lower: float = DEFAULT_LOWER
    scale: ScoreScale = "probability"
    relevant_labels: tuple[str, ...] | None = None
    drop_incorrect_documents: bool = False

    _evaluator: CragEvaluator = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Build the (cheap, model-free) evaluator so bad settings fail at construction."""
        self._evaluator = CragEvaluator(
            model=self.model,
            upper=self.upper,
            lower=self.lower,
            scale=self.scale,
            relevant_labels=self.relevant_labels,
        )

    @property
    def evaluator(self) -> CragEvaluator:
        """The :class:`~crag_integrations.crag.CragEvaluator` behind this compressor."""
        return self._evaluator

    def evaluate(self, query: str, documents: Sequence[Document]) -> CragEvaluation:
        """The CRAG verdict for ``documents`` (scores, bands and action); no documents:
        ``"incorrect"``, nothing scored. Dispatches no event."""
        return self._evaluator.evaluate(query, [d.page_content for d in documents])

    async def aevaluate(self, query: str, documents: Sequence[Document]) -> CragEvaluation:
        """Async :meth:`evaluate`."""
        return await self._evaluator.aevaluate(query, [d.page_content for d in documents])

    def _translate(
        self, documents: list[Document], evaluation: CragEvaluation, elapsed: float
    ) -> tuple[list[Document], dict[str, Any]]:
        out: list[Document] = []
        dropped: list[str] = []
        for index, (document, score, band) in enumerate(
            zip(documents, evaluation.scores, evaluation.document_actions, strict=True)
        ):
            if self.drop_incorrect_documents and band == "incorrect":
                dropped.append("incorrect")
                continue
            added = {
                "relevance_score": score,
                "crag_action": evaluation.action,
                "crag_document_action": band,
                "crag_original_index": index,
            }
            out.append(_copied(document, document.page_content, added))
        data = _event_data(
            type(self).__name__, len(documents), len(out), dropped, elapsed, evaluation.action
        )
        return out, data

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Score ``documents`` for ``query``; returns annotated copies, inputs untouched.

        Args:
            documents: The retrieved documents (not modified).
            query: The query they were retrieved for.
            callbacks: LangChain callbacks; each call dispatches one
                :data:`COMPRESSION_EVENT` custom event (with ``action``) to them.

        Returns:
            Copies of the documents in input order (without the ``incorrect`` ones when
            ``drop_incorrect_documents``), with the metadata in the class docstring.
        """
        documents = list(documents)
        start = time.perf_counter()
        evaluation = self.evaluate(query, documents)
        out, data = self._translate(documents, evaluation, time.perf_counter() - start)
        _dispatch(callbacks, data)
        return out

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`: awaits the engine, never blocks the loop."""
        documents = list(documents)
        start = time.perf_counter()
        evaluation = await self.aevaluate(query, documents)
        out, data = self._translate(documents, evaluation, time.perf_counter() - start)
        await _adispatch(callbacks, data)
        return out


class KnowledgeRefinerTrimmer(BaseDocumentCompressor):
    """CRAG knowledge refinement (a :class:`~crag_integrations.crag.KnowledgeRefiner`) as
    a trimmer: keep only each document's relevant strips.

    The model-agnostic alternative to :class:`EvidenceTrimmer`: any one-logit reranker or
    relevance grader will do, no token classifier needed. Each document is split into
    strips (sentences, groups of sentences or word windows); every strip of every document
    is scored in one batched engine call; strips scoring at least ``threshold`` (and among
    the ``top_k`` best *across all documents*) are kept and joined by ``separator`` in
    their original order. ``page_content`` becomes that text; ``crag_strips`` lists the
    kept strips (``start``, ``end``, ``text``, ``score``) with character offsets into the
    *original* ``page_content``; ``crag_num_strips`` is how many strips the document was
    split into; ``crag_trimmed`` says whether the content was replaced. A document with no
    kept strip (including an empty one) is kept whole (``on_no_evidence="keep"``, the
    default) or dropped (``"drop"``). Order is kept. No ``relevance_score`` is written.

    Args:
        model: Reranker or grader (hub id, local path or ``EngineConfig``).
        mode: ``"sentences"``, ``"sentence_groups"`` or ``"words"``.
        group_size: Sentences per strip for ``"sentence_groups"``.
        window_words: Words per strip for ``"words"``.
        threshold: Minimum strip score (on ``scale``); ``None`` for no threshold.
        top_k: Keep at most this many strips over all documents; ``None`` for no cap.
        separator: Joins a document's kept strips into the new ``page_content``.
        scale: ``"probability"`` (any head) or ``"logit"`` (one-logit rerankers).
        relevant_labels: For multi-class graders, the label names that mean relevant.
        on_no_evidence: ``"keep"`` a document with no kept strip whole, or ``"drop"`` it.

    Example:
        >>> refine = KnowledgeRefinerTrimmer(model="cross-encoder/ms-marco-MiniLM-L6-v2")
        >>> docs = refine.compress_documents(retrieved, "what causes rain?")  # doctest: +SKIP
        >>> docs[0].page_content, docs[0].metadata["crag_strips"][0]["start"]  # doctest: +SKIP
        ('Rain falls when droplets grow heavy.', 41)
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    model: str | EngineConfig = Field(description=_MODEL_DOC)
    mode: StripMode = "sentences"
    group_size: int = Field(default=3, ge=1)
    window_words: int = Field(default=50, ge=1)
    threshold: float | None = 0.5
    top_k: int | None = Field(default=None, ge=0)
    separator: str = " "
    scale: ScoreScale = "probability"
    relevant_labels: tuple[str, ...] | None = None
    on_no_evidence: NoEvidencePolicy = "keep"

    _refiner: KnowledgeRefiner = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        """Build the (cheap, model-free) refiner so bad settings fail at construction."""
        self._refiner = KnowledgeRefiner(
            model=self.model,
            mode=self.mode,
            group_size=self.group_size,
            window_words=self.window_words,
            threshold=self.threshold,
            top_k=self.top_k,
            separator=self.separator,
            scale=self.scale,
            relevant_labels=self.relevant_labels,
        )

    @property
    def refiner(self) -> KnowledgeRefiner:
        """The :class:`~crag_integrations.crag.KnowledgeRefiner` behind this trimmer."""
        return self._refiner

    def _translate(
        self, documents: list[Document], refined: list[RefinedDocument], elapsed: float
    ) -> tuple[list[Document], dict[str, Any]]:
        out: list[Document] = []
        dropped: list[str] = []
        for document, item in zip(documents, refined, strict=True):
            if not item.strips and self.on_no_evidence == "drop":
                dropped.append("no_evidence")
                continue
            added = {
                "crag_strips": [
                    {"start": s.start, "end": s.end, "text": s.text, "score": s.score}
                    for s in item.strips
                ],
                "crag_num_strips": item.num_strips,
                "crag_trimmed": bool(item.strips),
                "crag_original_index": item.index,
            }
            content = item.refined_text if item.strips else document.page_content
            out.append(_copied(document, content, added))
        data = _event_data(type(self).__name__, len(documents), len(out), dropped, elapsed)
        return out, data

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Refine ``documents`` for ``query``; returns new documents, inputs untouched.

        Args:
            documents: The retrieved documents (not modified).
            query: The query they were retrieved for.
            callbacks: LangChain callbacks; each call dispatches one
                :data:`COMPRESSION_EVENT` custom event to them.

        Returns:
            Copies of the documents in input order (less those dropped by
            ``on_no_evidence="drop"``), with the metadata in the class docstring.
        """
        documents = list(documents)
        start = time.perf_counter()
        refined = self._refiner.refine(query, [d.page_content for d in documents])
        out, data = self._translate(documents, refined, time.perf_counter() - start)
        _dispatch(callbacks, data)
        return out

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`: awaits the engine, never blocks the loop."""
        documents = list(documents)
        start = time.perf_counter()
        refined = await self._refiner.arefine(query, [d.page_content for d in documents])
        out, data = self._translate(documents, refined, time.perf_counter() - start)
        await _adispatch(callbacks, data)
        return out


@dataclass(frozen=True, kw_only=True)
class CragCrossEncoder(BaseCrossEncoder):
    """A ``langchain_core`` ``BaseCrossEncoder`` on the shared engine.

    ``score`` returns each pair's relevance probability in ``[0, 1]``, in input order: the
    sigmoid of a one-logit reranker's logit (what a sentence-transformers cross-encoder
    returns by default), or a classifier's relevance probability (a
    :class:`RelevanceGrader`'s, honouring ``relevant_labels``). It shares the loaded model
    with every compressor naming the same model.

    Args:
        model: Hub id, local checkpoint directory, or an ``EngineConfig``.
        relevant_labels: For classifiers, the label names that mean relevant.

    Example:
        >>> from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
        >>> encoder = CragCrossEncoder(model="cross-encoder/ms-marco-MiniLM-L6-v2")
        >>> compressor = CrossEncoderReranker(model=encoder, top_n=3)
        >>> encoder.score([("what causes rain?", "Vapour condenses.")])  # doctest: +SKIP
        [0.998]
    """

    model: str | EngineConfig
    relevant_labels: tuple[str, ...] | None = None

    @property
    def role(self) -> RelevanceGrader:
        """The :class:`RelevanceGrader` that computes the probabilities."""
        return RelevanceGrader(model=self.model, relevant_labels=self.relevant_labels)

    @staticmethod
    def _by_query(text_pairs: Sequence[tuple[str, str]]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for position, (query, _text) in enumerate(text_pairs):
            groups.setdefault(query, []).append(position)
        return groups

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Relevance probability of each ``(query, text)`` pair, in input order."""
        scores = [0.0] * len(text_pairs)
        role = self.role
        for query, positions in self._by_query(text_pairs).items():
            grades = role.grade(query, [text_pairs[p][1] for p in positions])
            for position, grade in zip(positions, grades, strict=True):
                scores[position] = grade.probability
        return scores

    async def ascore(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Async :meth:`score`."""
        scores = [0.0] * len(text_pairs)
        role = self.role
        for query, positions in self._by_query(text_pairs).items():
            grades = await role.agrade(query, [text_pairs[p][1] for p in positions])
            for position, grade in zip(positions, grades, strict=True):
                scores[position] = grade.probability
        return scores
