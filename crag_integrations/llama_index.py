"""LlamaIndex node postprocessors: rerank, filter and trim retrieved nodes.

Four :class:`~llama_index.core.postprocessor.types.BaseNodePostprocessor` subclasses that
*translate* between LlamaIndex nodes and :class:`~crag_integrations.RerankGradeTrimPipeline`
(every keep/drop/sort decision is made there and in the roles below it):

- :class:`CrossEncoderRerank`: sort by a one-logit cross-encoder, optional threshold, ``top_n``.
- :class:`RelevanceFilter`: drop nodes a relevance grader calls not relevant.
- :class:`EvidenceTrimmer`: replace each node's text by the evidence spans a token classifier
  finds in it.
- :class:`CragPostprocessor`: the three in sequence (each stage optional).

Contract shared by all four:

- The caller's ``NodeWithScore`` and node objects are never mutated; every returned node is
  a deep copy (``model_copy(deep=True)``) with the same ``id_`` and relationships.
- The text scored is ``node.get_content(metadata_mode=MetadataMode.NONE)``: the node's own
  text, without metadata, so that span offsets point into it.
- ``NodeWithScore.score`` becomes the rerank probability (``sigmoid`` of the logit, in
  ``[0, 1]``) when a reranker ran, else the relevance probability when a grader ran, else
  stays the incoming score. The first incoming score is kept in ``metadata["retrieval_score"]``
  (the key LlamaIndex's own rerankers use; an existing value is never overwritten, so a chain
  of postprocessors keeps the retriever's score).
- Bookkeeping goes into ``crag_*`` metadata keys (see :data:`METADATA_KEYS`), and every key
  written here is added to ``excluded_llm_metadata_keys`` and ``excluded_embed_metadata_keys``
  of the copy so it never reaches the LLM prompt or an embedding.
- ``ReRankStartEvent`` / ``ReRankEndEvent`` are sent through the instrumentation dispatcher
  and a ``CBEventType.RERANKING`` event through the callback manager, as LlamaIndex's own
  rerankers do.

Importing this module without ``llama-index-core`` raises an ``ImportError`` naming the extra.

Example:
    >>> from crag_integrations.llama_index import CrossEncoderRerank
    >>> rerank = CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=3)
    >>> engine = index.as_query_engine(node_postprocessors=[rerank])  # doctest: +SKIP
"""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401  (the guard: is the extra installed at all?)
except ModuleNotFoundError as error:
    # Only a missing llama_index / llama_index.core means "extra not installed"; anything
    # else (a broken install, a missing transitive dependency) must surface unchanged.
    if error.name not in ("llama_index", "llama_index.core"):
        raise
    raise ImportError(
        "crag_integrations.llama_index needs llama-index-core, which is not installed. "
        'Install it with: pip install "crag-integrations[llama-index]"'
    ) from error

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from crag_integrations.config import DType, EngineConfig
from crag_integrations.inputs import check_query
from crag_integrations.pipeline import NoEvidencePolicy, RerankGradeTrimPipeline
from crag_integrations.roles import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.types import DroppedText, DropReason, PipelineResult, ProcessedText

__all__ = [
    "METADATA_KEYS",
    "CragNodes",
    "CragPostprocessor",
    "CrossEncoderRerank",
    "DroppedNode",
    "EvidenceTrimmer",
    "RelevanceFilter",
]

# (The type: ignore above: get_dispatcher is re-exported without __all__, which strict
# mypy reads as private.)
dispatcher = get_dispatcher(__name__)

#: Every metadata key these postprocessors may write, with its meaning.
METADATA_KEYS: dict[str, str] = {
    "retrieval_score": "the node's score before the first postprocessor of this package ran",
    "crag_original_index": "the node's position in this postprocessor's input list",
    "crag_rerank_logit": "raw reranker logit (max over windows)",
    "crag_rerank_probability": "sigmoid of the logit; also the node's score",
    "crag_label": "the grader's most probable label",
    "crag_grade_probability": "probability that the node is relevant",
    "crag_probabilities": "the grader's probability per label name",
    "crag_spans": "evidence spans [{start, end, text, score}], offsets into the source text",
    "crag_trimmed": "whether the text was replaced by evidence spans",
    "crag_num_windows": "windows each stage split the text into, e.g. {'rerank': 1}",
    "crag_drop_reason": "why the node was dropped (only on CragNodes.dropped)",
}


# --------------------------------------------------------------------------------------
# Results of the public ``process`` / ``aprocess`` methods


@dataclass(frozen=True, slots=True)
class DroppedNode:
    """A node a postprocessor dropped, and the configured rule that dropped it.

    Attributes:
        node: A copy of the input node with the stages' metadata and ``crag_drop_reason``.
        reason: ``below_top_n``, ``below_score_threshold``, ``not_relevant`` or
            ``no_evidence``.
    """

    node: NodeWithScore
    reason: DropReason


@dataclass(frozen=True, slots=True)
class CragNodes:
    """Everything one postprocessor call decided, in LlamaIndex terms.

    Attributes:
        kept: What ``postprocess_nodes`` returns: new nodes in final order.
        dropped: Every other input node (as a copy) with its reason, in input order.
        result: The pipeline's own result; its indices point into the input list.
    """

    kept: list[NodeWithScore]
    dropped: list[DroppedNode]
    result: PipelineResult


# --------------------------------------------------------------------------------------
# Translation helpers (no decisions here: they only copy what the pipeline said)


def _node_text(node: NodeWithScore) -> str:
    return node.node.get_content(metadata_mode=MetadataMode.NONE)


def _stage_metadata(item: ProcessedText | DroppedText) -> dict[str, Any]:
    # Same keys and shapes as the LangChain adapters write (crag_integrations.langchain).
    metadata: dict[str, Any] = {"crag_original_index": item.index}
    windows: dict[str, int] = {}
    if item.ranked is not None:
        metadata["crag_rerank_logit"] = item.ranked.score
        metadata["crag_rerank_probability"] = item.ranked.probability
        windows["rerank"] = item.ranked.num_windows
    if item.grade is not None:
        metadata["crag_label"] = item.grade.label
        metadata["crag_grade_probability"] = item.grade.probability
        metadata["crag_probabilities"] = dict(item.grade.distribution)
        windows["grade"] = item.grade.num_windows
    if item.highlight is not None:
        metadata["crag_spans"] = [
            {"start": s.start, "end": s.end, "text": s.text, "score": s.score}
            for s in item.highlight.spans
        ]
        metadata["crag_trimmed"] = bool(item.highlight.spans)
        windows["highlight"] = item.highlight.num_windows
    metadata["crag_num_windows"] = windows
    return metadata


def _copy_node(
    source: NodeWithScore,
    item: ProcessedText | DroppedText,
    extra: dict[str, Any] | None = None,
) -> NodeWithScore:
    """A deep copy of ``source`` carrying what the pipeline said about it."""
    node = source.node.model_copy(deep=True)
    written = _stage_metadata(item)
    if extra:
        written.update(extra)
    if "retrieval_score" not in node.metadata:
        written["retrieval_score"] = source.score
    node.metadata = {**node.metadata, **written}
    for field_name in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
        excluded = list(getattr(node, field_name))
        excluded += [key for key in written if key not in excluded]
        setattr(node, field_name, excluded)

    spans = item.highlight.spans if item.highlight is not None else ()
    if isinstance(item, ProcessedText) and spans:
        node.set_content(item.output_text)
        if isinstance(node, TextNode):
            first, last = spans[0].start, spans[-1].end
            if node.start_char_idx is not None:
                node.start_char_idx = node.start_char_idx + first
            if node.end_char_idx is not None:
                node.end_char_idx = node.end_char_idx - (len(item.text) - last)

    if item.ranked is not None:
        score: float | None = item.ranked.probability
    elif item.grade is not None:
        score = item.grade.probability
    else:
        score = source.score
    return NodeWithScore(node=node, score=score)


def _translate(nodes: Sequence[NodeWithScore], result: PipelineResult) -> CragNodes:
    kept = [_copy_node(nodes[item.index], item) for item in result.kept]
    dropped = [
        DroppedNode(
            node=_copy_node(nodes[item.index], item, {"crag_drop_reason": item.reason}),
            reason=item.reason,
        )
        for item in result.dropped
    ]
    return CragNodes(kept=kept, dropped=dropped, result=result)


def _query(query_bundle: QueryBundle | None, owner: str) -> QueryBundle:
    if query_bundle is None:
        raise ValueError(
            f"{owner} needs the query: call postprocess_nodes(nodes, query_str=...) or "
            "postprocess_nodes(nodes, query_bundle=QueryBundle(...)); a query engine passes "
            "it for you."
        )
    check_query(query_bundle.query_str)
    return query_bundle


def _bundle(query_bundle: QueryBundle | None, query_str: str | None) -> QueryBundle | None:
    if query_str is not None and query_bundle is not None:
        raise ValueError("pass either query_str or query_bundle, not both")
    return QueryBundle(query_str) if query_str is not None else query_bundle


# --------------------------------------------------------------------------------------
# The shared base


class _CragNodePostprocessor(BaseNodePostprocessor):
    """Engine options, the live pipeline in a private attribute, events, translation."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    device: str = Field(
        default="auto", frozen=True, description="'auto' (CUDA, MPS, CPU) or a torch device."
    )
    dtype: DType = Field(
        default="auto", frozen=True, description="'auto', 'float32', 'float16' or 'bfloat16'."
    )
    max_length: int | None = Field(
        default=None,
        frozen=True,
        description="Tokens per window (None: the model's limit); longer texts are windowed.",
    )
    token_budget: int | None = Field(
        default=None, frozen=True, description="Max padded tokens per forward pass."
    )
    trust_remote_code: bool = Field(
        default=False, frozen=True, description="Allow custom modelling code from checkpoints."
    )
    local_files_only: bool | None = Field(
        default=None,
        frozen=True,
        description="Never reach the network (None: follow HF_HUB_OFFLINE).",
    )
    cache_dir: str | None = Field(
        default=None, frozen=True, description="Hugging Face cache directory."
    )

    _pipeline: RerankGradeTrimPipeline = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        # Runs on __init__, from_dict() and unpickling (BaseComponent.__setstate__ calls
        # __init__), so the live pipeline always re-attaches from the public fields.
        super().model_post_init(context)
        self._pipeline = self._build_pipeline()

    def _engine(self, model: str, revision: str | None = None) -> EngineConfig:
        return EngineConfig(
            model=model,
            revision=revision,
            device=self.device,
            dtype=self.dtype,
            max_length=self.max_length,
            token_budget=self.token_budget,
            trust_remote_code=self.trust_remote_code,
            local_files_only=self.local_files_only,
            cache_dir=self.cache_dir,
        )

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        raise NotImplementedError

    @property
    def pipeline(self) -> RerankGradeTrimPipeline:
        """The live :class:`RerankGradeTrimPipeline` that makes every decision."""
        return self._pipeline

    def _model_name(self) -> str:
        stages = (self._pipeline.reranker, self._pipeline.grader, self._pipeline.highlighter)
        return "+".join(s.engine_config.model for s in stages if s is not None)

    def _event_top_n(self, nodes: Sequence[NodeWithScore]) -> int:
        reranker = self._pipeline.reranker
        if reranker is not None and reranker.top_n is not None:
            return reranker.top_n
        return len(nodes)

    def _payload(self, nodes: list[NodeWithScore], query: QueryBundle) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self._model_name(),
            EventPayload.QUERY_STR: query.query_str,
            EventPayload.TOP_K: self._event_top_n(nodes),
        }

    def _start(self, nodes: list[NodeWithScore], query: QueryBundle) -> None:
        dispatcher.event(
            ReRankStartEvent(
                query=query,
                nodes=nodes,
                top_n=self._event_top_n(nodes),
                model_name=self._model_name(),
            )
        )

    # The public verbs: LlamaIndex's postprocess_nodes returns only the kept nodes, process
    # also returns what was dropped and why.

    def process(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragNodes:
        """Like ``postprocess_nodes``, but also return the dropped nodes with reasons."""
        query = _query(_bundle(query_bundle, query_str), type(self).__name__)
        nodes = list(nodes)
        self._start(nodes, query)
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._payload(nodes, query)
        ) as event:
            result = self._pipeline.run(query.query_str, [_node_text(n) for n in nodes])
            processed = _translate(nodes, result)
            event.on_end(payload={EventPayload.NODES: processed.kept})
        dispatcher.event(ReRankEndEvent(nodes=processed.kept))
        return processed

    async def aprocess(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragNodes:
        """Async :meth:`process`: awaits the engine, no thread per call."""
        query = _query(_bundle(query_bundle, query_str), type(self).__name__)
        nodes = list(nodes)
        self._start(nodes, query)
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._payload(nodes, query)
        ) as event:
            result = await self._pipeline.arun(query.query_str, [_node_text(n) for n in nodes])
            processed = _translate(nodes, result)
            event.on_end(payload={EventPayload.NODES: processed.kept})
        dispatcher.event(ReRankEndEvent(nodes=processed.kept))
        return processed

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return self.process(nodes, query_bundle=query_bundle).kept

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        # BaseNodePostprocessor's default runs _postprocess_nodes in a thread per call.
        return (await self.aprocess(nodes, query_bundle=query_bundle)).kept


# --------------------------------------------------------------------------------------


class CrossEncoderRerank(_CragNodePostprocessor):
    """Rerank nodes with a one-logit cross-encoder (:class:`~crag_integrations.Reranker`).

    Nodes are sorted best first; nodes whose raw logit is below ``score_threshold`` are
    dropped, then the list is cut to ``top_n``. Each returned node is a copy whose score is
    the rerank probability (``sigmoid`` of the logit); the logit is in
    ``metadata["crag_rerank_logit"]`` and the incoming score in ``metadata["retrieval_score"]``.

    Args:
        model: Hub id or local directory of a one-logit cross-encoder.
        top_n: Keep at most this many nodes (``None``: all).
        score_threshold: Drop nodes whose raw logit is below this, before the cut
            (a probability ``p`` corresponds to the logit ``log(p / (1 - p))``).
        revision: Hub revision of ``model``.

    Example:
        >>> rerank = CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=3)
        >>> nodes = rerank.postprocess_nodes(retrieved, query_str="what causes rain?")
        ... # doctest: +SKIP
        >>> [(n.node_id, round(n.score, 3)) for n in nodes]  # doctest: +SKIP
        [('n3', 0.998), ('n0', 0.871), ('n7', 0.412)]
    """

    model: str = Field(frozen=True, description="Hub id or local path of the cross-encoder.")
    top_n: int | None = Field(default=3, frozen=True, description="Keep at most this many.")
    score_threshold: float | None = Field(
        default=None, frozen=True, description="Minimum raw logit, applied before top_n."
    )
    revision: str | None = Field(default=None, frozen=True, description="Hub revision.")

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragCrossEncoderRerank"

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(
            reranker=Reranker(
                model=self._engine(self.model, self.revision),
                top_n=self.top_n,
                score_threshold=self.score_threshold,
            )
        )

    @property
    def reranker(self) -> Reranker:
        """The live :class:`~crag_integrations.Reranker`."""
        assert self._pipeline.reranker is not None
        return self._pipeline.reranker


class RelevanceFilter(_CragNodePostprocessor):
    """Drop nodes a relevance grader calls not relevant (a :class:`RelevanceGrader`).

    Kept nodes stay in input order; each is a copy whose score is the relevance probability,
    with the label, the probability per label and the incoming score in metadata.

    Args:
        model: Hub id or local directory of a sequence classifier (binary, OSMoSIS-style
            multi-class through ``relevant_labels``, or a one-logit reranker).
        threshold: Minimum relevance probability to keep a node.
        relevant_labels: Label names that mean relevant (default: read from ``id2label``).
        revision: Hub revision of ``model``.

    Example:
        >>> keep = RelevanceFilter(model="skshmjn/CRAG-ModernBert", threshold=0.5)
        >>> nodes = keep.postprocess_nodes(retrieved, query_str="rain?")  # doctest: +SKIP
        >>> [n.metadata["crag_label"] for n in nodes]  # doctest: +SKIP
        ['relevant', 'relevant']
    """

    model: str = Field(frozen=True, description="Hub id or local path of the grader.")
    threshold: float = Field(
        default=0.5, frozen=True, description="Minimum relevance probability to keep."
    )
    relevant_labels: tuple[str, ...] | None = Field(
        default=None, frozen=True, description="Label names that mean relevant."
    )
    revision: str | None = Field(default=None, frozen=True, description="Hub revision.")

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragRelevanceFilter"

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(
            grader=RelevanceGrader(
                model=self._engine(self.model, self.revision),
                threshold=self.threshold,
                relevant_labels=self.relevant_labels,
            )
        )

    @property
    def grader(self) -> RelevanceGrader:
        """The live :class:`~crag_integrations.RelevanceGrader`."""
        assert self._pipeline.grader is not None
        return self._pipeline.grader


class EvidenceTrimmer(_CragNodePostprocessor):
    """Replace each node's text by its evidence spans (an :class:`EvidenceHighlighter`).

    Returned nodes are copies (same ``id_`` and relationships) whose text is the evidence
    spans joined by ``separator``; ``metadata["crag_spans"]`` lists the spans' ``start`` /
    ``end`` offsets into the source node's text, and ``start_char_idx`` / ``end_char_idx``
    (where the source node has them) become the document offsets of the first and last
    evidence characters. Scores are unchanged. A node without evidence is kept whole
    (``on_no_evidence="keep"``, ``crag_spans == []``) or dropped (``"drop"``).

    Args:
        model: Hub id or local directory of a token classifier.
        threshold: Evidence probability cut-off (0.2 balanced, 0.5 high precision).
        min_span_chars: Drop spans shorter than this.
        merge_gap_chars: Merge spans at most this many characters apart.
        separator: Joins the spans into the new text.
        evidence_labels: Token labels that mark evidence (default: all but "outside").
        on_no_evidence: ``"keep"`` or ``"drop"`` nodes in which nothing was found.
        revision: Hub revision of ``model``.

    Example:
        >>> trim = EvidenceTrimmer(model="KRLabsOrg/acl-verbatim-modernbert", threshold=0.5)
        >>> nodes = trim.postprocess_nodes(retrieved, query_str="What is ModernBERT?")
        ... # doctest: +SKIP
        >>> nodes[0].text, nodes[0].metadata["crag_spans"]  # doctest: +SKIP
        ('ModernBERT is a long-context encoder.', [{'start': 0, 'end': 37, 'score': 0.93}])
    """

    model: str = Field(frozen=True, description="Hub id or local path of the token classifier.")
    threshold: float = Field(default=0.2, frozen=True, description="Evidence cut-off.")
    min_span_chars: int = Field(default=10, frozen=True, description="Minimum span length.")
    merge_gap_chars: int = Field(default=20, frozen=True, description="Merge gap in chars.")
    separator: str = Field(default=" ... ", frozen=True, description="Joins the spans.")
    evidence_labels: tuple[str, ...] | None = Field(
        default=None, frozen=True, description="Token labels that mark evidence."
    )
    on_no_evidence: NoEvidencePolicy = Field(
        default="keep", frozen=True, description="'keep' or 'drop' nodes without evidence."
    )
    revision: str | None = Field(default=None, frozen=True, description="Hub revision.")

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragEvidenceTrimmer"

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(
            highlighter=EvidenceHighlighter(
                model=self._engine(self.model, self.revision),
                threshold=self.threshold,
                min_span_chars=self.min_span_chars,
                merge_gap_chars=self.merge_gap_chars,
                separator=self.separator,
                evidence_labels=self.evidence_labels,
            ),
            on_no_evidence=self.on_no_evidence,
        )

    @property
    def highlighter(self) -> EvidenceHighlighter:
        """The live :class:`~crag_integrations.EvidenceHighlighter`."""
        assert self._pipeline.highlighter is not None
        return self._pipeline.highlighter


class CragPostprocessor(_CragNodePostprocessor):
    """Rerank, then filter, then trim, in one postprocessor (:class:`RerankGradeTrimPipeline`).

    Every stage is optional (give its model to enable it). Kept nodes come in rerank order
    (input order without a reranker); their score is the rerank probability, else the
    relevance probability, else the incoming score; their metadata carries every stage's
    ``crag_*`` keys. :meth:`process` also returns the dropped nodes with their reasons.

    Args:
        reranker_model: One-logit cross-encoder, or ``None`` to keep input order.
        grader_model: Sequence classifier, or ``None`` to skip filtering.
        highlighter_model: Token classifier, or ``None`` to keep texts whole.
        top_n: Reranker cut (``None``: all).
        score_threshold: Minimum raw rerank logit, applied before ``top_n``.
        relevance_threshold: Minimum relevance probability to keep a node.
        relevant_labels: Grader label names that mean relevant.
        evidence_threshold: Evidence probability cut-off of the highlighter.
        min_span_chars: Drop evidence spans shorter than this.
        merge_gap_chars: Merge evidence spans at most this many characters apart.
        separator: Joins evidence spans into the new text.
        evidence_labels: Token labels that mark evidence.
        on_no_evidence: ``"keep"`` or ``"drop"`` nodes in which no evidence was found.

    Example:
        >>> crag = CragPostprocessor(
        ...     reranker_model="cross-encoder/ms-marco-MiniLM-L6-v2",
        ...     grader_model="skshmjn/CRAG-ModernBert",
        ...     highlighter_model="KRLabsOrg/acl-verbatim-modernbert",
        ...     top_n=5,
        ... )
        >>> engine = index.as_query_engine(node_postprocessors=[crag])  # doctest: +SKIP
    """

    reranker_model: str | None = Field(default=None, frozen=True, description="Reranker.")
    grader_model: str | None = Field(default=None, frozen=True, description="Grader.")
    highlighter_model: str | None = Field(default=None, frozen=True, description="Highlighter.")
    top_n: int | None = Field(default=5, frozen=True, description="Reranker cut.")
    score_threshold: float | None = Field(
        default=None, frozen=True, description="Minimum raw rerank logit, before top_n."
    )
    relevance_threshold: float = Field(
        default=0.5, frozen=True, description="Minimum relevance probability."
    )
    relevant_labels: tuple[str, ...] | None = Field(
        default=None, frozen=True, description="Grader labels that mean relevant."
    )
    evidence_threshold: float = Field(default=0.2, frozen=True, description="Evidence cut-off.")
    min_span_chars: int = Field(default=10, frozen=True, description="Minimum span length.")
    merge_gap_chars: int = Field(default=20, frozen=True, description="Merge gap in chars.")
    separator: str = Field(default=" ... ", frozen=True, description="Joins the spans.")
    evidence_labels: tuple[str, ...] | None = Field(
        default=None, frozen=True, description="Token labels that mark evidence."
    )
    on_no_evidence: NoEvidencePolicy = Field(
        default="keep", frozen=True, description="'keep' or 'drop' nodes without evidence."
    )

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragPostprocessor"

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        if not (self.reranker_model or self.grader_model or self.highlighter_model):
            raise ValueError(
                "CragPostprocessor needs at least one of reranker_model, grader_model or "
                "highlighter_model; with none it would return its input unchanged."
            )
        return RerankGradeTrimPipeline(
            reranker=(
                Reranker(
                    model=self._engine(self.reranker_model),
                    top_n=self.top_n,
                    score_threshold=self.score_threshold,
                )
                if self.reranker_model
                else None
            ),
            grader=(
                RelevanceGrader(
                    model=self._engine(self.grader_model),
                    threshold=self.relevance_threshold,
                    relevant_labels=self.relevant_labels,
                )
                if self.grader_model
                else None
            ),
            highlighter=(
                EvidenceHighlighter(
                    model=self._engine(self.highlighter_model),
                    threshold=self.evidence_threshold,
                    min_span_chars=self.min_span_chars,
                    merge_gap_chars=self.merge_gap_chars,
                    separator=self.separator,
                    evidence_labels=self.evidence_labels,
                )
                if self.highlighter_model
                else None
            ),
            on_no_evidence=self.on_no_evidence,
        )
