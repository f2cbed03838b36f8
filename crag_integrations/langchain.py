"""LangChain adapters: rerank, filter and trim retrieved documents as document compressors.

Every class here translates between LangChain objects and the roles and pipeline below it;
none of them decides anything itself. Sorting, thresholds, label policies and span
extraction all live in :mod:`crag_integrations.roles` and
:mod:`crag_integrations.pipeline`.

- :class:`CrossEncoderRerank`: sort by a one-logit cross-encoder, threshold, cut to ``top_n``.
- :class:`RelevanceGraderFilter`: drop documents a relevance grader grades not relevant.
- :class:`EvidenceTrimmer`: replace each document's content by its evidence spans.
- :class:`CragCompressor`: rerank, filter and trim in one pass.
- :class:`CragCrossEncoder`: a ``langchain_core`` ``BaseCrossEncoder`` on the shared engine,
  for LangChain's own ``CrossEncoderReranker``.

Output documents are copies: ``id`` and existing metadata are kept (metadata is deep-copied),
and results are written under ``relevance_score`` plus ``crag_*`` keys (see
``docs/langchain.md``). The caller's documents are never mutated. Each call dispatches one
LangChain custom event, :data:`COMPRESSION_EVENT`, with counts and timing.

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
from crag_integrations.pipeline import NoEvidencePolicy, RerankGradeTrimPipeline
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
    "CragCompressor",
    "CragCrossEncoder",
    "CrossEncoderRerank",
    "EvidenceTrimmer",
    "RelevanceGraderFilter",
]

#: Name of the LangChain custom event every compressor dispatches once per call. Its data
#: is a dict: ``compressor`` (class name), ``documents_in``, ``documents_out``,
#: ``documents_dropped``, ``dropped_by_reason`` (reason -> count) and ``elapsed_s``.
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


def _copy_document(document: Document, item: ProcessedText) -> Document:
    metadata = {**copy.deepcopy(document.metadata), **_stage_metadata(item)}
    # model_copy keeps the caller's Document subclass and its id; the updated fields are
    # fresh objects, so nothing is shared with the input but immutable strings.
    return document.model_copy(update={"page_content": item.output_text, "metadata": metadata})


def _event_data(name: str, documents_in: int, result: PipelineResult, elapsed: float) -> Any:
    return {
        "compressor": name,
        "documents_in": documents_in,
        "documents_out": len(result.kept),
        "documents_dropped": len(result.dropped),
        "dropped_by_reason": dict(Counter(d.reason for d in result.dropped)),
        "elapsed_s": elapsed,
    }


def _inherited(callbacks: Callbacks | None) -> Callbacks | None:
    # Called directly inside a runnable (e.g. a RunnableLambda) without callbacks, use the
    # ambient run's callbacks so the event lands on that run, as dispatch_custom_event does.
    return callbacks if callbacks is not None else ensure_config().get("callbacks")


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
        elapsed = time.perf_counter() - start
        compressed = [_copy_document(documents[item.index], item) for item in result.kept]
        manager = CallbackManager.configure(inheritable_callbacks=_inherited(callbacks))
        manager.on_custom_event(
            COMPRESSION_EVENT,
            _event_data(type(self).__name__, len(documents), result, elapsed),
            run_id=manager.parent_run_id,
        )
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
        elapsed = time.perf_counter() - start
        compressed = [_copy_document(documents[item.index], item) for item in result.kept]
        manager = AsyncCallbackManager.configure(inheritable_callbacks=_inherited(callbacks))
        await manager.on_custom_event(
            COMPRESSION_EVENT,
            _event_data(type(self).__name__, len(documents), result, elapsed),
            run_id=manager.parent_run_id,
        )
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

    Args:
        reranker: A :class:`CrossEncoderRerank`, or ``None``.
        relevance_filter: A :class:`RelevanceGraderFilter`, or ``None``.
        trimmer: An :class:`EvidenceTrimmer`, or ``None``.

    Example:
        >>> crag = CragCompressor(
        ...     reranker=CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=5),
        ...     relevance_filter=RelevanceGraderFilter(model="skshmjn/CRAG-ModernBert"),
        ...     trimmer=EvidenceTrimmer(model="KRLabsOrg/acl-verbatim-modernbert"),
        ... )
        >>> docs = crag.compress_documents(retrieved, "what causes rain?")  # doctest: +SKIP
    """

    reranker: CrossEncoderRerank | None = None
    relevance_filter: RelevanceGraderFilter | None = None
    trimmer: EvidenceTrimmer | None = None

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        if self.reranker is None and self.relevance_filter is None and self.trimmer is None:
            raise ValueError(
                "CragCompressor needs at least one of reranker, relevance_filter or trimmer"
            )
        return RerankGradeTrimPipeline(
            reranker=self.reranker.role if self.reranker is not None else None,
            grader=self.relevance_filter.role if self.relevance_filter is not None else None,
            highlighter=self.trimmer.role if self.trimmer is not None else None,
            on_no_evidence=self.trimmer.on_no_evidence if self.trimmer is not None else "keep",
        )


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
