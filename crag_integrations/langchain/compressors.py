"""The LangChain document compressors: the shared options, plus documents in and out."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables.config import ensure_config
from pydantic import ConfigDict

from crag_integrations.by_query import aper_query, per_query
from crag_integrations.config import EngineConfig
from crag_integrations.inputs import check_items
from crag_integrations.metadata import relevance_score, stage_metadata
from crag_integrations.options import (
    CragOptions,
    EvaluatorOptions,
    FilterOptions,
    RefinerOptions,
    RerankOptions,
    Stage,
    TrimOptions,
)
from crag_integrations.roles import RelevanceGrader
from crag_integrations.types import CragAction, CragEvaluation, PipelineResult

__all__ = [
    "COMPRESSION_EVENT",
    "CragCompression",
    "CragCompressor",
    "CragCrossEncoder",
    "CragEvaluatorCompressor",
    "CrossEncoderRerank",
    "EvidenceTrimmer",
    "KnowledgeRefinerTrimmer",
    "RelevanceFilter",
]

#: Name of the LangChain custom event every compressor dispatches once per call. Its data
#: is a dict: ``compressor`` (class name), ``documents_in``, ``documents_out``,
#: ``documents_dropped``, ``dropped_by_reason`` (reason -> count) and ``elapsed_s``; plus
#: ``action`` (``"correct"`` / ``"ambiguous"`` / ``"incorrect"``) from the compressors that
#: decide the CRAG action.
COMPRESSION_EVENT = "crag_compression"


# --------------------------------------------------------------------------------------
# Translation: documents to texts, a PipelineResult back to documents (no decisions)


def _translate(documents: Sequence[Document], result: PipelineResult) -> list[Document]:
    out = []
    for item in result.kept:
        source = documents[item.index]
        added = stage_metadata(item, result.action)
        score = relevance_score(item)
        if score is not None:
            added["relevance_score"] = score
        # model_copy keeps the caller's Document subclass and its id; page_content and
        # metadata are fresh objects (other fields of a subclass are copied shallowly).
        metadata = {**copy.deepcopy(source.metadata), **added}
        out.append(
            source.model_copy(update={"page_content": item.output_text, "metadata": metadata})
        )
    return out


def _event(name: str, n_in: int, result: PipelineResult, elapsed: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "compressor": name,
        "documents_in": n_in,
        "documents_out": len(result.kept),
        "documents_dropped": len(result.dropped),
        "dropped_by_reason": dict(Counter(d.reason for d in result.dropped)),
        "elapsed_s": elapsed,
    }
    if result.action is not None:
        data["action"] = result.action
    return data


def _inherited(callbacks: Callbacks | None) -> Callbacks | None:
    # Called directly inside a runnable (e.g. a RunnableLambda) without callbacks, use the
    # ambient run's callbacks so the event lands on that run, as dispatch_custom_event does.
    return callbacks if callbacks is not None else ensure_config().get("callbacks")


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


class _Compressor(BaseDocumentCompressor):
    """Runs the stage its options describe and translates documents in and out."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    if TYPE_CHECKING:  # provided by the options class each compressor also inherits

        def stage(self) -> Stage: ...

    def _compress(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None
    ) -> tuple[list[Document], PipelineResult]:
        documents = check_items(documents, Document, "documents")
        start = time.perf_counter()
        result = self.stage().run(query, [d.page_content for d in documents])
        data = _event(type(self).__name__, len(documents), result, time.perf_counter() - start)
        manager = CallbackManager.configure(inheritable_callbacks=_inherited(callbacks))
        manager.on_custom_event(COMPRESSION_EVENT, data, run_id=manager.parent_run_id)
        return _translate(documents, result), result

    async def _acompress(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None
    ) -> tuple[list[Document], PipelineResult]:
        documents = check_items(documents, Document, "documents")
        start = time.perf_counter()
        result = await self.stage().arun(query, [d.page_content for d in documents])
        data = _event(type(self).__name__, len(documents), result, time.perf_counter() - start)
        manager = AsyncCallbackManager.configure(inheritable_callbacks=_inherited(callbacks))
        await manager.on_custom_event(COMPRESSION_EVENT, data, run_id=manager.parent_run_id)
        return _translate(documents, result), result

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Compress ``documents`` for ``query``; returns new documents, inputs untouched.

        Args:
            documents: The retrieved documents (not modified).
            query: The query they were retrieved for.
            callbacks: LangChain callbacks; each call dispatches one
                :data:`COMPRESSION_EVENT` custom event to them.

        Returns:
            Copies of the surviving documents, in the stage's final order, with the
            ``relevance_score`` and ``crag_*`` metadata of ``docs/metadata.md``.

        Raises:
            TypeError: ``documents`` is not a sequence of ``Document`` (before any model work).
        """
        return self._compress(documents, query, callbacks)[0]

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`: awaits the engine, never blocks the loop."""
        return (await self._acompress(documents, query, callbacks))[0]


class CrossEncoderRerank(RerankOptions, _Compressor):
    """Rerank documents with a one-logit cross-encoder (a :class:`Reranker`).

    Documents come back best first. ``score_threshold`` drops documents whose raw logit is
    below it, then the rest are cut to ``top_n`` (LangChain's ``CrossEncoderReranker``
    default, 3); nothing else is dropped. ``relevance_score`` is ``sigmoid(logit)`` in
    ``[0, 1]`` (what ``CrossEncoderReranker`` sees from a sentence-transformers one-label
    cross-encoder); the raw logit is ``crag_rerank_logit``. Engine options (``device``,
    ``dtype``, ``max_length``, ...) and ``model_name=`` are accepted as in
    :class:`~crag_integrations.options.EngineOptions`.

    Example:
        >>> rerank = CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=2)
        >>> docs = rerank.compress_documents(retrieved, "what causes rain?")  # doctest: +SKIP
        >>> [d.metadata["relevance_score"] for d in docs]  # doctest: +SKIP
        [0.998, 0.41]
    """


class RelevanceFilter(FilterOptions, _Compressor):
    """Drop documents a relevance grader (a :class:`RelevanceGrader`) grades not relevant.

    Survivors keep their input order. A document is relevant when the grader's relevance
    probability is at least ``threshold``; ``relevant_labels`` names the classifier labels
    that count as relevant (default: the grader's rules, e.g. the positive class of a
    binary grader). ``relevance_score`` is that relevance probability; ``crag_label`` is
    the most probable label and ``crag_probabilities`` every label's probability.

    Example:
        >>> keep = RelevanceFilter(model="skshmjn/CRAG-ModernBert", threshold=0.5)
        >>> docs = keep.compress_documents(retrieved, "what causes rain?")  # doctest: +SKIP
        >>> [d.metadata["crag_label"] for d in docs]  # doctest: +SKIP
        ['relevant']
    """


class EvidenceTrimmer(TrimOptions, _Compressor):
    """Replace each document's content by its evidence (an :class:`EvidenceHighlighter`).

    ``page_content`` becomes the evidence spans joined by ``separator``; ``crag_spans``
    lists the spans with character offsets into the *original* ``page_content``. A
    document with no evidence is kept whole (``on_no_evidence="keep"``, the default, with
    ``crag_trimmed=False``) or dropped (``"drop"``). Order is kept. No ``relevance_score``
    is written: spans are not a relevance judgement of the whole document.

    Example:
        >>> trim = EvidenceTrimmer(model="KRLabsOrg/acl-verbatim-modernbert")
        >>> docs = trim.compress_documents(retrieved, "what is ModernBERT?")  # doctest: +SKIP
        >>> docs[0].page_content  # doctest: +SKIP
        'ModernBERT is a long-context encoder for NLP.'
    """


class CragCompressor(CragOptions, _Compressor):
    """Rerank, then filter, then trim, in one :class:`RerankGradeTrimPipeline` pass.

    Each stage is configured by the matching single-stage compressor (at least one is
    required): the reranker sorts, thresholds and cuts; the filter drops what is not
    relevant among the reranked survivors; the trimmer replaces the remaining documents'
    content by their evidence (its ``on_no_evidence`` applies). Metadata is the union of
    the stages' keys; ``relevance_score`` is the reranker's probability when a reranker
    is configured, else the grader's.

    With ``action_upper`` and ``action_lower`` set (both or neither), the same pass also
    decides the CRAG action (see :class:`RerankGradeTrimPipeline`) and writes it as
    ``crag_action`` into every output document and into the event. :meth:`evaluate_action`
    returns the action with the documents, so an agent needs no second pass and still gets
    the action when no document survives.

    Example:
        >>> crag = CragCompressor(
        ...     reranker=CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=5),
        ...     relevance_filter=RelevanceFilter(model="skshmjn/CRAG-ModernBert"),
        ...     trimmer=EvidenceTrimmer(model="KRLabsOrg/acl-verbatim-modernbert"),
        ...     action_upper=0.6,
        ...     action_lower=0.2,
        ... )
        >>> result = crag.evaluate_action("what causes rain?", retrieved)  # doctest: +SKIP
        >>> result.action, [d.metadata["crag_action"] for d in result.documents]  # doctest: +SKIP
        ('correct', ['correct', 'correct'])
    """

    reranker: CrossEncoderRerank | None = None
    relevance_filter: RelevanceFilter | None = None
    trimmer: EvidenceTrimmer | None = None

    def evaluate_action(
        self, query: str, documents: Sequence[Document], callbacks: Callbacks | None = None
    ) -> CragCompression:
        """Compress ``documents`` and decide the CRAG action, in one pass.

        Returns:
            The action, the compressed documents (as :meth:`compress_documents` returns
            them) and the scores the action was decided on. No documents: ``"incorrect"``
            and nothing scored.

        Raises:
            ValueError: If ``action_upper`` / ``action_lower`` are not set.
        """
        self._thresholds_required()
        return self._compression(*self._compress(documents, query, callbacks))

    async def aevaluate_action(
        self, query: str, documents: Sequence[Document], callbacks: Callbacks | None = None
    ) -> CragCompression:
        """Async :meth:`evaluate_action`: awaits the engine, never blocks the loop."""
        self._thresholds_required()
        return self._compression(*await self._acompress(documents, query, callbacks))

    def _compression(self, documents: list[Document], result: PipelineResult) -> CragCompression:
        assert result.action is not None
        scores = tuple(self.stage().action_scores(result))
        return CragCompression(action=result.action, documents=tuple(documents), scores=scores)

    def _thresholds_required(self) -> None:
        if not self.stage().decides_action:
            raise ValueError(
                "evaluate_action needs action_upper and action_lower; set them on this "
                "CragCompressor (or call compress_documents for documents only)"
            )


class CragEvaluatorCompressor(EvaluatorOptions, _Compressor):
    """Score every document with a :class:`~crag_integrations.crag.CragEvaluator` and write
    the CRAG action into each one, in one batched engine call.

    Every output document is a copy of an input document, in input order (nothing is
    sorted), with ``relevance_score`` (its score on ``scale``), ``crag_action`` (the
    query-level action), ``crag_document_action`` (the document's own band: ``correct`` >=
    ``upper``, ``incorrect`` < ``lower``, else ``ambiguous``) and ``crag_original_index``.
    By default every document is returned; ``drop_incorrect=True`` drops those whose own
    band is ``"incorrect"``. Either way an empty output means the action is
    ``"incorrect"``. For the action without reading metadata (an agent's branch), call
    :meth:`evaluate` / :meth:`aevaluate`.

    Example:
        >>> evaluator = CragEvaluatorCompressor(model="skshmjn/CRAG-ModernBert")
        >>> evaluator.evaluate("what causes rain?", retrieved).action  # doctest: +SKIP
        'correct'
        >>> docs = evaluator.compress_documents(retrieved, "what causes rain?")  # doctest: +SKIP
        >>> [d.metadata["crag_document_action"] for d in docs]  # doctest: +SKIP
        ['correct', 'incorrect', 'ambiguous']
    """

    def evaluate(self, query: str, documents: Sequence[Document]) -> CragEvaluation:
        """The CRAG verdict for ``documents`` (scores, bands and action); no documents:
        ``"incorrect"``, nothing scored. Dispatches no event."""
        documents = check_items(documents, Document, "documents")
        return self.stage().evaluate(query, [d.page_content for d in documents])

    async def aevaluate(self, query: str, documents: Sequence[Document]) -> CragEvaluation:
        """Async :meth:`evaluate`."""
        documents = check_items(documents, Document, "documents")
        return await self.stage().aevaluate(query, [d.page_content for d in documents])


class KnowledgeRefinerTrimmer(RefinerOptions, _Compressor):
    """CRAG knowledge refinement (a :class:`~crag_integrations.crag.KnowledgeRefiner`) as
    a trimmer: keep only each document's relevant strips.

    The model-agnostic alternative to :class:`EvidenceTrimmer`: any one-logit reranker or
    relevance grader will do. Each document is split into strips (sentences, groups of
    sentences or word windows); every strip of every document is scored in one batched
    engine call; strips scoring at least ``threshold`` (and among the ``top_k`` best
    *across all documents*) are kept and joined by ``separator`` in their original order.
    ``page_content`` becomes that text; ``crag_strips`` lists the kept strips with
    character offsets into the *original* ``page_content``; ``crag_num_strips`` is how many
    strips the document was split into; ``crag_trimmed`` says whether the content was
    replaced. A document with no kept strip is kept whole (``on_no_evidence="keep"``) or
    dropped (``"drop"``). Order is kept. No ``relevance_score`` is written.

    Example:
        >>> refine = KnowledgeRefinerTrimmer(model="cross-encoder/ms-marco-MiniLM-L6-v2")
        >>> docs = refine.compress_documents(retrieved, "what causes rain?")  # doctest: +SKIP
        >>> docs[0].page_content, docs[0].metadata["crag_strips"][0]["start"]  # doctest: +SKIP
        ('Rain falls when droplets grow heavy.', 41)
    """


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

    def __post_init__(self) -> None:
        self.role  # noqa: B018  (builds the grader: bad settings fail here, not on first use)

    @property
    def role(self) -> RelevanceGrader:
        """The :class:`RelevanceGrader` that computes the probabilities."""
        return RelevanceGrader(model=self.model, relevant_labels=self.relevant_labels)

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Relevance probability of each ``(query, text)`` pair, in input order."""
        return [grade.probability for grade in per_query(text_pairs, self.role.agrade)]

    async def ascore(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Async :meth:`score`: every query in flight at once, sharing forward passes."""
        return [grade.probability for grade in await aper_query(text_pairs, self.role.agrade)]
