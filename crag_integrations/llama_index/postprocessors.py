"""The LlamaIndex node postprocessors: the shared options, plus nodes in and out."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama_index.core.bridge.pydantic import ConfigDict, Field, model_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from crag_integrations.inputs import check_items, check_query
from crag_integrations.metadata import (
    METADATA_SCHEMA,
    evidence_spans,
    relevance_score,
    stage_metadata,
)
from crag_integrations.options import (
    CragOptions,
    EngineOptions,
    EvaluatorOptions,
    FilterOptions,
    RefinerOptions,
    RerankOptions,
    Stage,
    TrimOptions,
)
from crag_integrations.types import (
    CragAction,
    CragEvaluation,
    DroppedText,
    DropReason,
    PipelineResult,
    ProcessedText,
    RefinedDocument,
)

__all__ = [
    "METADATA_KEYS",
    "CragEvaluatedNodes",
    "CragEvaluatorPostprocessor",
    "CragNodes",
    "CragPostprocessor",
    "CrossEncoderRerank",
    "DroppedNode",
    "EvidenceTrimmer",
    "KnowledgeRefinerTrimmer",
    "NodeDropReason",
    "RefinedNodes",
    "RelevanceFilter",
]

# (The type: ignore above: get_dispatcher is re-exported without __all__, which strict
# mypy reads as private.)
dispatcher = get_dispatcher(__name__)

#: Every metadata key these postprocessors may write, with its meaning: the shared schema
#: of :mod:`crag_integrations.metadata` plus LlamaIndex's own ``retrieval_score``.
METADATA_KEYS: dict[str, str] = {
    "retrieval_score": "the node's score before the first postprocessor of this package ran",
    **{key: spec.meaning for key, spec in METADATA_SCHEMA.items()},
}

#: Why a node was dropped (the shared :data:`~crag_integrations.types.DropReason`).
NodeDropReason = DropReason


# --------------------------------------------------------------------------------------
# Results of the public ``process`` / ``aprocess`` methods


@dataclass(frozen=True, slots=True)
class DroppedNode:
    """A node a postprocessor dropped, and the configured rule that dropped it.

    Attributes:
        node: A copy of the input node with the stages' metadata and ``crag_drop_reason``.
        reason: ``below_top_n``, ``below_score_threshold``, ``not_relevant``,
            ``no_evidence`` or ``incorrect``.
    """

    node: NodeWithScore
    reason: NodeDropReason


@dataclass(frozen=True, slots=True)
class CragNodes:
    """Everything one postprocessor call decided, in LlamaIndex terms.

    Attributes:
        kept: What ``postprocess_nodes`` returns: new nodes in final order.
        dropped: Every other input node (as a copy) with its reason, in input order.
        result: The stage's own result; its indices point into the input list.

    Example:
        >>> out = evaluator.process(nodes, query_str="rain?")  # doctest: +SKIP
        >>> out.action, len(out.kept)  # doctest: +SKIP
        ('ambiguous', 3)
    """

    kept: list[NodeWithScore]
    dropped: list[DroppedNode]
    result: PipelineResult

    @property
    def action(self) -> CragAction | None:
        """The query's CRAG action when the postprocessor decides one (the evaluator, or
        the composite with action thresholds), else ``None``; set even when nothing is
        kept, so an agent can always branch on it."""
        return self.result.action

    @property
    def evaluation(self) -> CragEvaluation | None:
        """The CRAG evaluator's verdict (scores and bands in input order), if it ran."""
        return self.result.evaluation

    @property
    def refined(self) -> list[RefinedDocument]:
        """The knowledge refiner's result per input node, in input order (if it ran)."""
        items: list[ProcessedText | DroppedText] = [*self.result.kept, *self.result.dropped]
        items.sort(key=lambda item: item.index)
        return [item.refined for item in items if item.refined is not None]


#: What :class:`CragEvaluatorPostprocessor` and :class:`KnowledgeRefinerTrimmer` return:
#: the same :class:`CragNodes` (these names are kept for code written against 0.1).
CragEvaluatedNodes = CragNodes
RefinedNodes = CragNodes


# --------------------------------------------------------------------------------------
# Translation helpers (no decisions here: they only copy what the stage said)


def _copy_node(
    source: NodeWithScore, item: ProcessedText | DroppedText, action: CragAction | None
) -> NodeWithScore:
    """A deep copy of ``source`` carrying what the stage said (hidden from LLM and embeds)."""
    node = source.node.model_copy(deep=True)
    written = stage_metadata(item, action)
    if "retrieval_score" not in node.metadata:
        written["retrieval_score"] = source.score
    node.metadata = {**node.metadata, **written}
    for field_name in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
        excluded = list(getattr(node, field_name))
        excluded += [key for key in written if key not in excluded]
        setattr(node, field_name, excluded)
    spans = evidence_spans(item)
    if isinstance(item, ProcessedText) and spans:
        # The text becomes the evidence; the document offsets move to its first and last
        # characters.
        node.set_content(item.output_text)
        if isinstance(node, TextNode):
            if node.start_char_idx is not None:
                node.start_char_idx += spans[0].start
            if node.end_char_idx is not None:
                node.end_char_idx -= len(item.text) - spans[-1].end
    score = relevance_score(item)
    return NodeWithScore(node=node, score=source.score if score is None else score)


def _translate(
    nodes: Sequence[NodeWithScore], result: PipelineResult, *, copy_dropped: bool = True
) -> CragNodes:
    kept = [_copy_node(nodes[item.index], item, result.action) for item in result.kept]
    # postprocess_nodes returns only the kept nodes: deep copies of the dropped ones
    # (embeddings, relationships) are made only for process(), which reports them.
    dropped = [
        DroppedNode(node=_copy_node(nodes[item.index], item, result.action), reason=item.reason)
        for item in (result.dropped if copy_dropped else ())
    ]
    return CragNodes(kept=kept, dropped=dropped, result=result)


def _query(query_bundle: QueryBundle | None, query_str: str | None, owner: str) -> str:
    if query_str is not None and query_bundle is not None:
        raise ValueError("pass either query_str or query_bundle, not both")
    if query_str is None and query_bundle is None:
        raise ValueError(
            f"{owner} needs the query: call postprocess_nodes(nodes, query_str=...) or "
            "postprocess_nodes(nodes, query_bundle=QueryBundle(...)); a query engine passes "
            "it for you."
        )
    return check_query(query_str if query_bundle is None else query_bundle.query_str)


def _content(nodes: Sequence[NodeWithScore], mode: MetadataMode) -> list[str]:
    return [n.node.get_content(metadata_mode=mode) for n in nodes]


def _metadata_mode() -> Any:
    return Field(
        default=MetadataMode.EMBED,
        frozen=True,
        description="What of the node is scored: EMBED (text with its embedding metadata, "
        "as SentenceTransformerRerank) or NONE (the text alone).",
    )


# --------------------------------------------------------------------------------------
# The shared base


class _Postprocessor(BaseNodePostprocessor):
    """Runs the stage its options describe, sends the reranking events, translates nodes."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    if TYPE_CHECKING:  # provided by the options class each postprocessor also inherits

        def stage(self) -> Stage: ...

    @model_validator(mode="before")
    @classmethod
    def _without_class_name(cls, data: Any) -> Any:
        # to_dict() writes "class_name" at every level; a nested stage's dict carries its own.
        if isinstance(data, dict) and data.get("class_name") == cls.class_name():
            data = {k: v for k, v in data.items() if k != "class_name"}
        return data

    def _texts(self, nodes: Sequence[NodeWithScore]) -> list[str]:
        """What the stage reads: as its ``metadata_mode`` says for the relevance stages, the
        node's own text for the span stages (so span offsets point into it)."""
        return _content(nodes, getattr(self, "metadata_mode", MetadataMode.NONE))

    def _run(self, query: str, nodes: Sequence[NodeWithScore]) -> PipelineResult:
        return self.stage().run(query, self._texts(nodes))

    async def _arun(self, query: str, nodes: Sequence[NodeWithScore]) -> PipelineResult:
        return await self.stage().arun(query, self._texts(nodes))

    def _model_name(self) -> str:
        assert isinstance(self, EngineOptions)
        return self.engine_config().model

    def _event_top_n(self, nodes: Sequence[NodeWithScore]) -> int:
        return len(nodes)

    @contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query: str
    ) -> Iterator[Callable[[list[NodeWithScore]], None]]:
        """Send the start events; yield ``finish(kept)``, which sends the end events."""
        model_name, top_n = self._model_name(), self._event_top_n(nodes)
        bundle = QueryBundle(query)
        dispatcher.event(
            ReRankStartEvent(query=bundle, nodes=nodes, top_n=top_n, model_name=model_name)
        )
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model_name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: top_n,
        }
        returned: list[list[NodeWithScore]] = []
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:

            def finish(kept: list[NodeWithScore]) -> None:
                event.on_end(payload={EventPayload.NODES: kept})
                returned.append(kept)

            yield finish
        if returned:
            dispatcher.event(ReRankEndEvent(nodes=returned[0]))

    def process(
        self,
        nodes: Sequence[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragNodes:
        """Like ``postprocess_nodes``, but also return the dropped nodes with their reasons,
        the stage's result and the CRAG action (if one is decided).

        Raises:
            TypeError: ``nodes`` is not a list of ``NodeWithScore`` (before any model work).
            ValueError: No query, or a blank one.
        """
        return self._process(nodes, query_bundle, query_str, copy_dropped=True)

    def _process(
        self,
        nodes: Sequence[NodeWithScore],
        query_bundle: QueryBundle | None,
        query_str: str | None,
        *,
        copy_dropped: bool,
    ) -> CragNodes:
        query = _query(query_bundle, query_str, type(self).__name__)
        items = check_items(nodes, NodeWithScore, "nodes")
        with self._reranking(items, query) as finish:
            processed = _translate(items, self._run(query, items), copy_dropped=copy_dropped)
            finish(processed.kept)
        return processed

    async def aprocess(
        self,
        nodes: Sequence[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragNodes:
        """Async :meth:`process`: awaits the engine, no thread per call."""
        return await self._aprocess(nodes, query_bundle, query_str, copy_dropped=True)

    async def _aprocess(
        self,
        nodes: Sequence[NodeWithScore],
        query_bundle: QueryBundle | None,
        query_str: str | None,
        *,
        copy_dropped: bool,
    ) -> CragNodes:
        query = _query(query_bundle, query_str, type(self).__name__)
        items = check_items(nodes, NodeWithScore, "nodes")
        with self._reranking(items, query) as finish:
            result = await self._arun(query, items)
            processed = _translate(items, result, copy_dropped=copy_dropped)
            finish(processed.kept)
        return processed

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return self._process(nodes, query_bundle, None, copy_dropped=False).kept

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        # BaseNodePostprocessor's default runs _postprocess_nodes in a thread per call.
        return (await self._aprocess(nodes, query_bundle, None, copy_dropped=False)).kept


# --------------------------------------------------------------------------------------


class CrossEncoderRerank(RerankOptions, _Postprocessor):
    """Rerank nodes with a one-logit cross-encoder (:class:`~crag_integrations.Reranker`).

    Nodes are sorted best first; nodes whose raw logit is below ``score_threshold`` are
    dropped, then the list is cut to ``top_n`` (``SentenceTransformerRerank``'s default,
    2). Each returned node is a copy whose score is the rerank probability (``sigmoid``
    of the logit); the logit is in ``metadata["crag_rerank_logit"]`` and the incoming score
    in ``metadata["retrieval_score"]``. ``model_name=`` and ``device`` work as in
    ``SentenceTransformerRerank``.

    Example:
        >>> rerank = CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=3)
        >>> nodes = rerank.postprocess_nodes(retrieved, query_str="what causes rain?")
        ... # doctest: +SKIP
        >>> [(n.node_id, round(n.score, 3)) for n in nodes]  # doctest: +SKIP
        [('n3', 0.998), ('n0', 0.871), ('n7', 0.412)]
    """

    top_n: int | None = Field(
        default=2, frozen=True, strict=True, description="Keep at most this many (None: all)."
    )
    metadata_mode: MetadataMode = _metadata_mode()

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragCrossEncoderRerank"

    def _event_top_n(self, nodes: Sequence[NodeWithScore]) -> int:
        return len(nodes) if self.top_n is None else self.top_n


class RelevanceFilter(FilterOptions, _Postprocessor):
    """Drop nodes a relevance grader calls not relevant (a :class:`RelevanceGrader`).

    Kept nodes stay in input order; each is a copy whose score is the relevance probability,
    with the label, the probability per label and the incoming score in metadata.

    Example:
        >>> keep = RelevanceFilter(model="skshmjn/CRAG-ModernBert", threshold=0.5)
        >>> nodes = keep.postprocess_nodes(retrieved, query_str="rain?")  # doctest: +SKIP
        >>> [n.metadata["crag_label"] for n in nodes]  # doctest: +SKIP
        ['relevant', 'relevant']
    """

    metadata_mode: MetadataMode = _metadata_mode()

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragRelevanceFilter"


class EvidenceTrimmer(TrimOptions, _Postprocessor):
    """Replace each node's text by its evidence spans (an :class:`EvidenceHighlighter`).

    Returned nodes are copies (same ``id_`` and relationships) whose text is the evidence
    spans joined by ``separator``; ``metadata["crag_spans"]`` lists the spans' ``start`` /
    ``end`` offsets into the source node's text, and ``start_char_idx`` / ``end_char_idx``
    (where the source node has them) become the document offsets of the first and last
    evidence characters. Scores are unchanged. A node without evidence is kept whole
    (``on_no_evidence="keep"``, ``crag_spans == []``) or dropped (``"drop"``).

    Example:
        >>> trim = EvidenceTrimmer(model="KRLabsOrg/acl-verbatim-modernbert", threshold=0.5)
        >>> nodes = trim.postprocess_nodes(retrieved, query_str="What is ModernBERT?")
        ... # doctest: +SKIP
        >>> nodes[0].text, nodes[0].metadata["crag_spans"]  # doctest: +SKIP
        ('ModernBERT is a long-context encoder.', [{'start': 0, 'end': 37, 'score': 0.93}])
    """

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragEvidenceTrimmer"


class CragPostprocessor(CragOptions, _Postprocessor):
    """Rerank, then filter, then trim, in one postprocessor (:class:`RerankGradeTrimPipeline`).

    Each stage is configured by the matching single-stage postprocessor (at least one is
    required). Kept nodes come in rerank order (input order without a reranker); their
    score is the rerank probability, else the relevance probability, else the incoming
    score; their metadata carries every stage's ``crag_*`` keys. :meth:`process` also
    returns the dropped nodes with their reasons. The reranker and the filter read the
    node as their ``metadata_mode`` says (set it the same on both), the trimmer its text.

    With ``action_upper`` and ``action_lower`` set (both or neither), the same pass also
    decides the query's CRAG action (see :class:`RerankGradeTrimPipeline`) and writes it
    as ``crag_action`` into every returned node (kept and dropped), and as ``action`` on
    the :class:`CragNodes` that :meth:`process` / :meth:`aprocess` return, which carries it
    even when no node survives.

    Example:
        >>> crag = CragPostprocessor(
        ...     reranker=CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=5),
        ...     relevance_filter=RelevanceFilter(model="skshmjn/CRAG-ModernBert"),
        ...     trimmer=EvidenceTrimmer(model="KRLabsOrg/acl-verbatim-modernbert"),
        ...     action_upper=0.6,
        ...     action_lower=0.2,
        ... )
        >>> engine = index.as_query_engine(node_postprocessors=[crag])  # doctest: +SKIP
        >>> crag.process(retrieved, query_str="what causes rain?").action  # doctest: +SKIP
        'ambiguous'
    """

    reranker: CrossEncoderRerank | None = Field(
        default=None, frozen=True, description="The rerank stage, or None."
    )
    relevance_filter: RelevanceFilter | None = Field(
        default=None, frozen=True, description="The filter stage, or None."
    )
    trimmer: EvidenceTrimmer | None = Field(
        default=None, frozen=True, description="The trim stage, or None."
    )

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragPostprocessor"

    @property
    def _scored_mode(self) -> MetadataMode:
        modes = {s.metadata_mode for s in (self.reranker, self.relevance_filter) if s is not None}
        if len(modes) > 1:
            raise ValueError(
                "the reranker and the relevance_filter must read the same node content: "
                "give them the same metadata_mode"
            )
        return modes.pop() if modes else MetadataMode.NONE

    @model_validator(mode="after")
    def _one_scored_mode(self) -> Any:
        self._scored_mode  # noqa: B018  (raises on a mismatch, at construction)
        return self

    def _run(self, query: str, nodes: Sequence[NodeWithScore]) -> PipelineResult:
        scored = _content(nodes, self._scored_mode)
        return self.stage().run(query, self._texts(nodes), scored_texts=scored)

    async def _arun(self, query: str, nodes: Sequence[NodeWithScore]) -> PipelineResult:
        scored = _content(nodes, self._scored_mode)
        return await self.stage().arun(query, self._texts(nodes), scored_texts=scored)

    def _model_name(self) -> str:
        stages = (self.reranker, self.relevance_filter, self.trimmer)
        return "+".join(s.engine_config().model for s in stages if s is not None)

    def _event_top_n(self, nodes: Sequence[NodeWithScore]) -> int:
        if self.reranker is not None and self.reranker.top_n is not None:
            return self.reranker.top_n
        return len(nodes)


class CragEvaluatorPostprocessor(EvaluatorOptions, _Postprocessor):
    """Score every node with a :class:`~crag_integrations.crag.CragEvaluator` and write the
    query's CRAG action into each one, in one batched engine call.

    Returned nodes are copies in input order (nothing is sorted) whose score is the node's
    relevance score on ``scale``, with ``crag_action`` (the query-level action),
    ``crag_document_action`` (the node's own band: ``correct`` >= ``upper``, ``incorrect``
    < ``lower``, else ``ambiguous``), ``crag_evaluation_score``, ``crag_original_index`` and
    ``retrieval_score`` in metadata. Every node is returned by default;
    ``drop_incorrect=True`` drops the nodes whose own band is ``"incorrect"`` (they appear
    in :meth:`process`'s ``dropped``). For the action without reading metadata (an agent's
    branch, or when no node is left), call :meth:`evaluate` / :meth:`aevaluate`, or
    :meth:`process` for action and nodes at once.

    Example:
        >>> evaluator = CragEvaluatorPostprocessor(model="skshmjn/CRAG-ModernBert")
        >>> evaluator.evaluate(retrieved, query_str="what causes rain?").action
        ... # doctest: +SKIP
        'correct'
    """

    metadata_mode: MetadataMode = _metadata_mode()

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragEvaluatorPostprocessor"

    def evaluate(
        self,
        nodes: Sequence[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragEvaluation:
        """The CRAG verdict (action, scores and bands in input order) for ``nodes``.

        No nodes: ``"incorrect"``, nothing scored. Sends no event and copies no node.
        """
        query = _query(query_bundle, query_str, type(self).__name__)
        items = check_items(nodes, NodeWithScore, "nodes")
        return self.stage().evaluate(query, self._texts(items))

    async def aevaluate(
        self,
        nodes: Sequence[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragEvaluation:
        """Async :meth:`evaluate`: awaits the engine, no thread per call."""
        query = _query(query_bundle, query_str, type(self).__name__)
        items = check_items(nodes, NodeWithScore, "nodes")
        return await self.stage().aevaluate(query, self._texts(items))


class KnowledgeRefinerTrimmer(RefinerOptions, _Postprocessor):
    """CRAG knowledge refinement (a :class:`~crag_integrations.crag.KnowledgeRefiner`) as
    a trimmer: keep only each node's relevant strips.

    The model-agnostic alternative to :class:`EvidenceTrimmer`: any one-logit reranker or
    relevance grader will do. Each node's text is split into strips (sentences, groups of
    sentences or word windows); every strip of every node is scored in one batched engine
    call; strips scoring at least ``threshold`` (and among the ``top_k`` best *across all
    nodes*) are kept and joined by ``separator`` in their original order. Returned nodes
    are copies in input order whose text is that joined text, with ``crag_strips``
    (offsets into the *original* node text), ``crag_num_strips``, ``crag_trimmed`` and
    ``crag_original_index`` in metadata; ``start_char_idx`` / ``end_char_idx`` move to the
    first and last kept characters, as :class:`EvidenceTrimmer` does. Scores are unchanged.
    A node with no kept strip is kept whole (``on_no_evidence="keep"``) or dropped
    (``"drop"``).

    Example:
        >>> refine = KnowledgeRefinerTrimmer(model="cross-encoder/ms-marco-MiniLM-L6-v2")
        >>> nodes = refine.postprocess_nodes(retrieved, query_str="what causes rain?")
        ... # doctest: +SKIP
        >>> nodes[0].text, nodes[0].metadata["crag_strips"][0]["start"]  # doctest: +SKIP
        ('Rain falls when droplets grow heavy.', 41)
    """

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragKnowledgeRefinerTrimmer"
