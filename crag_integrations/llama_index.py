"""LlamaIndex node postprocessors: rerank, filter, trim, and decide the CRAG action.

Six :class:`~llama_index.core.postprocessor.types.BaseNodePostprocessor` subclasses that
*translate* between LlamaIndex nodes and the layers below (every keep/drop/sort decision
and every CRAG action is made by :class:`~crag_integrations.RerankGradeTrimPipeline`, the
roles, and :mod:`crag_integrations.crag`):

- :class:`CrossEncoderRerank`: sort by a one-logit cross-encoder, optional threshold, ``top_n``.
- :class:`RelevanceFilter`: drop nodes a relevance grader calls not relevant.
- :class:`EvidenceTrimmer`: replace each node's text by the evidence spans a token classifier
  finds in it.
- :class:`CragPostprocessor`: the three in sequence (each stage optional), optionally
  deciding the CRAG action on the way (``action_upper`` / ``action_lower``).
- :class:`CragEvaluatorPostprocessor`: the CRAG retrieval evaluator
  (:class:`~crag_integrations.crag.CragEvaluator`): scores every node in one batched call
  and writes the query's action (``correct`` / ``ambiguous`` / ``incorrect``) into each.
- :class:`KnowledgeRefinerTrimmer`: CRAG knowledge refinement
  (:class:`~crag_integrations.crag.KnowledgeRefiner`), the model-agnostic alternative to
  :class:`EvidenceTrimmer`: keep each node's relevant strips.

Contract shared by all six:

- The caller's ``NodeWithScore`` and node objects are never mutated; every returned node is
  a deep copy (``model_copy(deep=True)``) with the same ``id_`` and relationships.
- The text scored is ``node.get_content(metadata_mode=MetadataMode.NONE)``: the node's own
  text, without metadata, so that span offsets point into it.
- ``NodeWithScore.score`` becomes the rerank probability (``sigmoid`` of the logit, in
  ``[0, 1]``) when a reranker ran, else the relevance probability when a grader ran, else
  stays the incoming score (the evaluator: its relevance score; the refiner: unchanged).
  The first incoming score is kept in ``metadata["retrieval_score"]``
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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from crag_integrations.config import DType, EngineConfig
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
from crag_integrations.inputs import check_query
from crag_integrations.pipeline import NoEvidencePolicy, RerankGradeTrimPipeline, action_scores
from crag_integrations.roles import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.types import (
    DroppedText,
    DropReason,
    PipelineResult,
    ProcessedText,
    Span,
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
    "crag_trimmed": "whether the text was replaced by evidence spans or strips",
    "crag_action": "the query's CRAG action: 'correct', 'ambiguous' or 'incorrect'",
    "crag_document_action": "the node's own band: correct (>= upper), incorrect (< lower)",
    "crag_strips": "kept strips [{start, end, text, score}], offsets into the source text",
    "crag_num_strips": "how many strips the refiner split the text into",
    "crag_num_windows": "windows each stage split the text into, e.g. {'rerank': 1}",
    "crag_drop_reason": "why the node was dropped (only on the dropped nodes of process())",
}

#: Why a node was dropped: the pipeline's reasons, plus ``"incorrect"`` (its own CRAG band,
#: from :class:`CragEvaluatorPostprocessor` with ``drop_incorrect_nodes=True``).
NodeDropReason = DropReason | Literal["incorrect"]


# --------------------------------------------------------------------------------------
# Results of the public ``process`` / ``aprocess`` methods


@dataclass(frozen=True, slots=True)
class DroppedNode:
    """A node a postprocessor dropped, and the configured rule that dropped it.

    Attributes:
        node: A copy of the input node with the stages' metadata and ``crag_drop_reason``.
        reason: ``below_top_n``, ``below_score_threshold``, ``not_relevant``,
            ``no_evidence`` or (from :class:`CragEvaluatorPostprocessor`) ``incorrect``.
    """

    node: NodeWithScore
    reason: NodeDropReason


@dataclass(frozen=True, slots=True)
class CragNodes:
    """Everything one postprocessor call decided, in LlamaIndex terms.

    Attributes:
        kept: What ``postprocess_nodes`` returns: new nodes in final order.
        dropped: Every other input node (as a copy) with its reason, in input order.
        result: The pipeline's own result; its indices point into the input list.
        action: The query's CRAG action (``"correct"``, ``"ambiguous"``, ``"incorrect"``)
            when the postprocessor decides one (:class:`CragPostprocessor` with
            ``action_upper`` / ``action_lower``), else ``None``. Set even when no node is
            kept, so an agent can always branch on it.
    """

    kept: list[NodeWithScore]
    dropped: list[DroppedNode]
    result: PipelineResult
    action: CragAction | None = None


@dataclass(frozen=True, slots=True)
class CragEvaluatedNodes:
    """What :meth:`CragEvaluatorPostprocessor.process` decided.

    Attributes:
        kept: What ``postprocess_nodes`` returns: annotated copies, in input order.
        dropped: Nodes whose own band is ``incorrect`` when ``drop_incorrect_nodes``.
        evaluation: The evaluator's verdict (action, scores and bands, in input order).

    Example:
        >>> out = evaluator.process(nodes, query_str="rain?")  # doctest: +SKIP
        >>> out.action, len(out.kept)  # doctest: +SKIP
        ('ambiguous', 3)
    """

    kept: list[NodeWithScore]
    dropped: list[DroppedNode]
    evaluation: CragEvaluation

    @property
    def action(self) -> CragAction:
        """The query's CRAG action (``"incorrect"`` when there were no nodes)."""
        return self.evaluation.action


@dataclass(frozen=True, slots=True)
class RefinedNodes:
    """What :meth:`KnowledgeRefinerTrimmer.process` decided.

    Attributes:
        kept: What ``postprocess_nodes`` returns: refined copies, in input order.
        dropped: Nodes with no kept strip when ``on_no_evidence="drop"`` (``no_evidence``).
        refined: The refiner's own result per input node; indices point into the input.

    Example:
        >>> out = refiner.process(nodes, query_str="rain?")  # doctest: +SKIP
        >>> [(d.node.node_id, d.reason) for d in out.dropped]  # doctest: +SKIP
        [('n2', 'no_evidence')]
    """

    kept: list[NodeWithScore]
    dropped: list[DroppedNode]
    refined: list[RefinedDocument]


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
        metadata["crag_spans"] = _spans_metadata(item.highlight.spans)
        metadata["crag_trimmed"] = bool(item.highlight.spans)
        windows["highlight"] = item.highlight.num_windows
    metadata["crag_num_windows"] = windows
    return metadata


def _spans_metadata(spans: Sequence[Span]) -> list[dict[str, Any]]:
    return [{"start": s.start, "end": s.end, "text": s.text, "score": s.score} for s in spans]


def _annotated_copy(
    source: NodeWithScore,
    written: dict[str, Any],
    score: float | None,
    trimmed: tuple[str, str, Sequence[Span]] | None = None,
) -> NodeWithScore:
    """A deep copy of ``source`` with ``written`` metadata (hidden from LLM and embeddings).

    ``trimmed`` is ``(original text, new text, kept spans)``: the copy's text becomes the
    new text and its document offsets move to the first and last kept characters.
    """
    node = source.node.model_copy(deep=True)
    written = dict(written)
    if "retrieval_score" not in node.metadata:
        written["retrieval_score"] = source.score
    node.metadata = {**node.metadata, **written}
    for field_name in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
        excluded = list(getattr(node, field_name))
        excluded += [key for key in written if key not in excluded]
        setattr(node, field_name, excluded)

    if trimmed is not None and trimmed[2]:
        original, new_text, spans = trimmed
        node.set_content(new_text)
        if isinstance(node, TextNode):
            first, last = spans[0].start, spans[-1].end
            if node.start_char_idx is not None:
                node.start_char_idx = node.start_char_idx + first
            if node.end_char_idx is not None:
                node.end_char_idx = node.end_char_idx - (len(original) - last)
    return NodeWithScore(node=node, score=score)


def _copy_node(
    source: NodeWithScore,
    item: ProcessedText | DroppedText,
    extra: dict[str, Any] | None = None,
) -> NodeWithScore:
    """A deep copy of ``source`` carrying what the pipeline said about it."""
    written = _stage_metadata(item)
    if extra:
        written.update(extra)
    trimmed = None
    if isinstance(item, ProcessedText) and item.highlight is not None:
        trimmed = (item.text, item.output_text, item.highlight.spans)
    if item.ranked is not None:
        score: float | None = item.ranked.probability
    elif item.grade is not None:
        score = item.grade.probability
    else:
        score = source.score
    return _annotated_copy(source, written, score, trimmed)


def _translate(
    nodes: Sequence[NodeWithScore], result: PipelineResult, action: CragAction | None = None
) -> CragNodes:
    extra = {"crag_action": action} if action is not None else {}
    kept = [_copy_node(nodes[item.index], item, extra) for item in result.kept]
    dropped = [
        DroppedNode(
            node=_copy_node(nodes[item.index], item, {**extra, "crag_drop_reason": item.reason}),
            reason=item.reason,
        )
        for item in result.dropped
    ]
    return CragNodes(kept=kept, dropped=dropped, result=result, action=action)


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
# The shared bases


class _EngineNodePostprocessor(BaseNodePostprocessor):
    """Engine options, frozen strict config, and the reranking events every class sends."""

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

    def _model_name(self) -> str:
        raise NotImplementedError

    def _event_top_n(self, nodes: Sequence[NodeWithScore]) -> int:
        return len(nodes)

    @contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query: QueryBundle
    ) -> Iterator[Callable[[list[NodeWithScore]], None]]:
        """Send the start events; yield ``finish(kept)``, which sends the end events."""
        model_name, top_n = self._model_name(), self._event_top_n(nodes)
        dispatcher.event(
            ReRankStartEvent(query=query, nodes=nodes, top_n=top_n, model_name=model_name)
        )
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model_name,
            EventPayload.QUERY_STR: query.query_str,
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


class _CragNodePostprocessor(_EngineNodePostprocessor):
    """The live pipeline in a private attribute, and its translation to nodes."""

    _pipeline: RerankGradeTrimPipeline = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        # Runs on __init__, from_dict() and unpickling (BaseComponent.__setstate__ calls
        # __init__), so the live pipeline always re-attaches from the public fields.
        super().model_post_init(context)
        self._pipeline = self._build_pipeline()

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

    def _action(self, result: PipelineResult) -> CragAction | None:
        """The CRAG action to report for ``result``; ``None``: this class decides none."""
        return None

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
        with self._reranking(nodes, query) as finish:
            result = self._pipeline.run(query.query_str, [_node_text(n) for n in nodes])
            processed = _translate(nodes, result, self._action(result))
            finish(processed.kept)
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
        with self._reranking(nodes, query) as finish:
            result = await self._pipeline.arun(query.query_str, [_node_text(n) for n in nodes])
            processed = _translate(nodes, result, self._action(result))
            finish(processed.kept)
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

    With ``action_upper`` and ``action_lower`` set (both or neither), the same pass also
    decides the query's CRAG action (:func:`crag_integrations.crag.decide_action` over
    :func:`crag_integrations.pipeline.action_scores`: the grade probabilities of every
    graded node when a grader is configured, else the rerank probabilities of every node)
    and writes it as ``crag_action`` into every returned node (kept and dropped), and as
    ``action`` on the :class:`CragNodes` that :meth:`process` / :meth:`aprocess` return,
    which carries it even when no node survives.

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
        action_upper: Relevance probability at or above which one node makes the action
            ``"correct"`` (``None``: decide no action).
        action_lower: Relevance probability below which every node must fall for
            ``"incorrect"`` (``None``: decide no action).

    Example:
        >>> crag = CragPostprocessor(
        ...     reranker_model="cross-encoder/ms-marco-MiniLM-L6-v2",
        ...     grader_model="skshmjn/CRAG-ModernBert",
        ...     highlighter_model="KRLabsOrg/acl-verbatim-modernbert",
        ...     top_n=5,
        ...     action_upper=0.6,
        ...     action_lower=0.2,
        ... )
        >>> engine = index.as_query_engine(node_postprocessors=[crag])  # doctest: +SKIP
        >>> crag.process(retrieved, query_str="what causes rain?").action  # doctest: +SKIP
        'ambiguous'
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
    action_upper: float | None = Field(
        default=None, ge=0.0, le=1.0, frozen=True, description="CRAG 'correct' threshold."
    )
    action_lower: float | None = Field(
        default=None, ge=0.0, le=1.0, frozen=True, description="CRAG 'incorrect' threshold."
    )

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragPostprocessor"

    def _action(self, result: PipelineResult) -> CragAction | None:
        if self.action_upper is None or self.action_lower is None:
            return None
        return decide_action(
            action_scores(result), upper=self.action_upper, lower=self.action_lower
        )

    def _build_pipeline(self) -> RerankGradeTrimPipeline:
        if not (self.reranker_model or self.grader_model or self.highlighter_model):
            raise ValueError(
                "CragPostprocessor needs at least one of reranker_model, grader_model or "
                "highlighter_model; with none it would return its input unchanged."
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
            if not (self.reranker_model or self.grader_model):
                raise ValueError(
                    "the CRAG action is decided on relevance scores: add a reranker_model or "
                    "a grader_model, or use CragEvaluatorPostprocessor"
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


# --------------------------------------------------------------------------------------
# CRAG: the retrieval evaluator's action, and knowledge refinement


class CragEvaluatorPostprocessor(_EngineNodePostprocessor):
    """Score every node with a :class:`~crag_integrations.crag.CragEvaluator` and write the
    query's CRAG action into each one, in one batched engine call.

    Returned nodes are copies in input order (nothing is sorted) whose score is the node's
    relevance score on ``scale``, with ``crag_action`` (the query-level action:
    ``"correct"``, ``"ambiguous"`` or ``"incorrect"``), ``crag_document_action`` (the
    node's own band: ``correct`` >= ``upper``, ``incorrect`` < ``lower``, else
    ``ambiguous``), ``crag_original_index`` and ``retrieval_score`` in metadata. Policy:
    every node is returned by default; ``drop_incorrect_nodes=True`` drops the nodes whose
    own band is ``"incorrect"`` (they appear in :meth:`process`'s ``dropped``). For the
    action without reading metadata (an agent's branch, or when no node is left), call
    :meth:`evaluate` / :meth:`aevaluate`, or :meth:`process` for action and nodes at once.

    Args:
        model: A one-logit reranker, a binary grader or a multi-class grader.
        upper: Score at or above which one node makes the action ``"correct"``.
        lower: Score below which every node must fall for ``"incorrect"``.
        scale: ``"probability"`` (any head; scores in ``[0, 1]``) or ``"logit"`` (one-logit
            rerankers; thresholds and scores are raw logits).
        relevant_labels: For multi-class graders, the label names that mean relevant.
        drop_incorrect_nodes: Drop nodes whose own band is ``"incorrect"``.
        revision: Hub revision of ``model``.

    Example:
        >>> evaluator = CragEvaluatorPostprocessor(model="skshmjn/CRAG-ModernBert")
        >>> evaluator.evaluate(retrieved, query_str="what causes rain?").action
        ... # doctest: +SKIP
        'correct'
        >>> nodes = evaluator.postprocess_nodes(retrieved, query_str="what causes rain?")
        ... # doctest: +SKIP
        >>> [n.metadata["crag_document_action"] for n in nodes]  # doctest: +SKIP
        ['correct', 'incorrect', 'ambiguous']
    """

    model: str = Field(frozen=True, description="Hub id or local path of the evaluator model.")
    upper: float = Field(default=DEFAULT_UPPER, frozen=True, description="'correct' threshold.")
    lower: float = Field(default=DEFAULT_LOWER, frozen=True, description="'incorrect' threshold.")
    scale: ScoreScale = Field(
        default="probability", frozen=True, description="'probability' or 'logit'."
    )
    relevant_labels: tuple[str, ...] | None = Field(
        default=None, frozen=True, description="Label names that mean relevant."
    )
    drop_incorrect_nodes: bool = Field(
        default=False, frozen=True, description="Drop nodes whose own band is 'incorrect'."
    )
    revision: str | None = Field(default=None, frozen=True, description="Hub revision.")

    _evaluator: CragEvaluator = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragEvaluatorPostprocessor"

    def model_post_init(self, context: Any, /) -> None:
        # Re-attaches on __init__, from_dict() and unpickling, like the pipeline classes.
        super().model_post_init(context)
        self._evaluator = CragEvaluator(
            model=self._engine(self.model, self.revision),
            upper=self.upper,
            lower=self.lower,
            scale=self.scale,
            relevant_labels=self.relevant_labels,
        )

    @property
    def evaluator(self) -> CragEvaluator:
        """The live :class:`~crag_integrations.crag.CragEvaluator` that decides the action."""
        return self._evaluator

    def _model_name(self) -> str:
        return self.model

    def evaluate(
        self,
        nodes: Sequence[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragEvaluation:
        """The CRAG verdict (action, scores and bands in input order) for ``nodes``.

        No nodes: ``"incorrect"``, nothing scored. Sends no event and copies no node.
        """
        query = _query(_bundle(query_bundle, query_str), type(self).__name__)
        return self._evaluator.evaluate(query.query_str, [_node_text(n) for n in nodes])

    async def aevaluate(
        self,
        nodes: Sequence[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragEvaluation:
        """Async :meth:`evaluate`: awaits the engine, no thread per call."""
        query = _query(_bundle(query_bundle, query_str), type(self).__name__)
        return await self._evaluator.aevaluate(query.query_str, [_node_text(n) for n in nodes])

    def _translate(
        self, nodes: list[NodeWithScore], evaluation: CragEvaluation
    ) -> CragEvaluatedNodes:
        kept: list[NodeWithScore] = []
        dropped: list[DroppedNode] = []
        for index, (node, score, band) in enumerate(
            zip(nodes, evaluation.scores, evaluation.document_actions, strict=True)
        ):
            written: dict[str, Any] = {
                "crag_original_index": index,
                "crag_action": evaluation.action,
                "crag_document_action": band,
            }
            if self.drop_incorrect_nodes and band == "incorrect":
                written["crag_drop_reason"] = "incorrect"
                dropped.append(
                    DroppedNode(node=_annotated_copy(node, written, score), reason="incorrect")
                )
            else:
                kept.append(_annotated_copy(node, written, score))
        return CragEvaluatedNodes(kept=kept, dropped=dropped, evaluation=evaluation)

    def process(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragEvaluatedNodes:
        """Like ``postprocess_nodes``, but also return the verdict and any dropped nodes."""
        query = _query(_bundle(query_bundle, query_str), type(self).__name__)
        nodes = list(nodes)
        with self._reranking(nodes, query) as finish:
            evaluation = self._evaluator.evaluate(query.query_str, [_node_text(n) for n in nodes])
            processed = self._translate(nodes, evaluation)
            finish(processed.kept)
        return processed

    async def aprocess(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> CragEvaluatedNodes:
        """Async :meth:`process`: awaits the engine, no thread per call."""
        query = _query(_bundle(query_bundle, query_str), type(self).__name__)
        nodes = list(nodes)
        with self._reranking(nodes, query) as finish:
            evaluation = await self._evaluator.aevaluate(
                query.query_str, [_node_text(n) for n in nodes]
            )
            processed = self._translate(nodes, evaluation)
            finish(processed.kept)
        return processed

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return self.process(nodes, query_bundle=query_bundle).kept

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return (await self.aprocess(nodes, query_bundle=query_bundle)).kept


class KnowledgeRefinerTrimmer(_EngineNodePostprocessor):
    """CRAG knowledge refinement (a :class:`~crag_integrations.crag.KnowledgeRefiner`) as
    a trimmer: keep only each node's relevant strips.

    The model-agnostic alternative to :class:`EvidenceTrimmer`: any one-logit reranker or
    relevance grader will do, no token classifier needed. Each node's text is split into
    strips (sentences, groups of sentences or word windows); every strip of every node is
    scored in one batched engine call; strips scoring at least ``threshold`` (and among the
    ``top_k`` best *across all nodes*) are kept and joined by ``separator`` in their
    original order. Returned nodes are copies in input order whose text is that joined
    text, with ``crag_strips`` (``start``, ``end``, ``text``, ``score`` of each kept strip,
    offsets into the *original* node text), ``crag_num_strips`` (how many strips the text
    was split into), ``crag_trimmed`` and ``crag_original_index`` in metadata;
    ``start_char_idx`` / ``end_char_idx`` (where the source node has them) move to the
    first and last kept characters, as :class:`EvidenceTrimmer` does. Scores are unchanged.
    A node with no kept strip (including an empty one) is kept whole
    (``on_no_evidence="keep"``, ``crag_strips == []``) or dropped (``"drop"``).

    Args:
        model: Hub id or local directory of a reranker or grader.
        mode: ``"sentences"``, ``"sentence_groups"`` or ``"words"``.
        group_size: Sentences per strip for ``"sentence_groups"``.
        window_words: Words per strip for ``"words"``.
        threshold: Minimum strip score (on ``scale``); ``None`` for no threshold.
        top_k: Keep at most this many strips over all nodes; ``None`` for no cap.
        separator: Joins a node's kept strips into its new text.
        scale: ``"probability"`` (any head) or ``"logit"`` (one-logit rerankers).
        relevant_labels: For multi-class graders, the label names that mean relevant.
        on_no_evidence: ``"keep"`` a node with no kept strip whole, or ``"drop"`` it.
        revision: Hub revision of ``model``.

    Example:
        >>> refine = KnowledgeRefinerTrimmer(model="cross-encoder/ms-marco-MiniLM-L6-v2")
        >>> nodes = refine.postprocess_nodes(retrieved, query_str="what causes rain?")
        ... # doctest: +SKIP
        >>> nodes[0].text, nodes[0].metadata["crag_strips"][0]["start"]  # doctest: +SKIP
        ('Rain falls when droplets grow heavy.', 41)
    """

    model: str = Field(frozen=True, description="Hub id or local path of the scorer.")
    mode: StripMode = Field(
        default="sentences", frozen=True, description="'sentences', 'sentence_groups', 'words'."
    )
    group_size: int = Field(default=3, ge=1, frozen=True, description="Sentences per strip.")
    window_words: int = Field(default=50, ge=1, frozen=True, description="Words per strip.")
    threshold: float | None = Field(
        default=0.5, frozen=True, description="Minimum strip score (None: off)."
    )
    top_k: int | None = Field(
        default=None, ge=0, frozen=True, description="Strips kept over all nodes (None: all)."
    )
    separator: str = Field(default=" ", frozen=True, description="Joins the kept strips.")
    scale: ScoreScale = Field(
        default="probability", frozen=True, description="'probability' or 'logit'."
    )
    relevant_labels: tuple[str, ...] | None = Field(
        default=None, frozen=True, description="Label names that mean relevant."
    )
    on_no_evidence: NoEvidencePolicy = Field(
        default="keep", frozen=True, description="'keep' or 'drop' nodes with no kept strip."
    )
    revision: str | None = Field(default=None, frozen=True, description="Hub revision.")

    _refiner: KnowledgeRefiner = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        """The serialisation name."""
        return "CragKnowledgeRefinerTrimmer"

    def model_post_init(self, context: Any, /) -> None:
        # Re-attaches on __init__, from_dict() and unpickling, like the pipeline classes.
        super().model_post_init(context)
        self._refiner = KnowledgeRefiner(
            model=self._engine(self.model, self.revision),
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
        """The live :class:`~crag_integrations.crag.KnowledgeRefiner` that picks strips."""
        return self._refiner

    def _model_name(self) -> str:
        return self.model

    def _translate(
        self, nodes: list[NodeWithScore], refined: list[RefinedDocument]
    ) -> RefinedNodes:
        kept: list[NodeWithScore] = []
        dropped: list[DroppedNode] = []
        for node, item in zip(nodes, refined, strict=True):
            written: dict[str, Any] = {
                "crag_original_index": item.index,
                "crag_strips": _spans_metadata(item.strips),
                "crag_num_strips": item.num_strips,
                "crag_trimmed": bool(item.strips),
            }
            if not item.strips and self.on_no_evidence == "drop":
                written["crag_drop_reason"] = "no_evidence"
                dropped.append(
                    DroppedNode(
                        node=_annotated_copy(node, written, node.score), reason="no_evidence"
                    )
                )
                continue
            trimmed = (item.text, item.refined_text, item.strips)
            kept.append(_annotated_copy(node, written, node.score, trimmed))
        return RefinedNodes(kept=kept, dropped=dropped, refined=refined)

    def process(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> RefinedNodes:
        """Like ``postprocess_nodes``, but also return the dropped nodes and the strips."""
        query = _query(_bundle(query_bundle, query_str), type(self).__name__)
        nodes = list(nodes)
        with self._reranking(nodes, query) as finish:
            refined = self._refiner.refine(query.query_str, [_node_text(n) for n in nodes])
            processed = self._translate(nodes, refined)
            finish(processed.kept)
        return processed

    async def aprocess(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
        query_str: str | None = None,
    ) -> RefinedNodes:
        """Async :meth:`process`: awaits the engine, no thread per call."""
        query = _query(_bundle(query_bundle, query_str), type(self).__name__)
        nodes = list(nodes)
        with self._reranking(nodes, query) as finish:
            refined = await self._refiner.arefine(query.query_str, [_node_text(n) for n in nodes])
            processed = self._translate(nodes, refined)
            finish(processed.kept)
        return processed

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return self.process(nodes, query_bundle=query_bundle).kept

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return (await self.aprocess(nodes, query_bundle=query_bundle)).kept
