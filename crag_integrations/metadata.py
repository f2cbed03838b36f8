"""The metadata written onto LangChain documents and LlamaIndex nodes: one schema, no framework.

Both adapters copy the caller's document or node and add exactly what :func:`stage_metadata`
returns for it, so the same inputs give the same keys, values and types in either framework.
Each ecosystem's own convention comes on top, in its adapter: LangChain's
``relevance_score`` key and LlamaIndex's ``NodeWithScore.score`` both carry
:func:`relevance_score`, and LlamaIndex keeps the incoming score in ``retrieval_score``.
``docs/metadata.md`` is the table of :data:`METADATA_SCHEMA`, generated from it and checked
by a test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crag_integrations.types import CragAction, DroppedText, ProcessedText, Span

__all__ = [
    "METADATA_SCHEMA",
    "MetadataKey",
    "evidence_spans",
    "relevance_score",
    "spans_metadata",
    "stage_metadata",
]


@dataclass(frozen=True, slots=True)
class MetadataKey:
    """One metadata key: the JSON-like type of its value, what it means, who writes it."""

    type: str
    meaning: str
    written_by: str


#: Every key the adapters may write, in the order of the docs table.
METADATA_SCHEMA: Mapping[str, MetadataKey] = {
    "crag_original_index": MetadataKey(
        "int", "the item's position in the list given to this adapter call", "every stage"
    ),
    "crag_rerank_logit": MetadataKey(
        "float", "the reranker's raw logit (max over windows)", "rerank"
    ),
    "crag_rerank_probability": MetadataKey(
        "float", "sigmoid of the rerank logit, in [0, 1]", "rerank"
    ),
    "crag_label": MetadataKey("str", "the grader's most probable label", "filter"),
    "crag_grade_probability": MetadataKey(
        "float", "the grader's probability that the item is relevant", "filter"
    ),
    "crag_probabilities": MetadataKey(
        "dict[str, float]", "the grader's probability per label name", "filter"
    ),
    "crag_spans": MetadataKey(
        "list[{start, end, text, score}]",
        "evidence spans; start/end are offsets into the text the stage read",
        "trim",
    ),
    "crag_strips": MetadataKey(
        "list[{start, end, text, score}]",
        "kept strips; start/end are offsets into the text the stage read",
        "refine",
    ),
    "crag_num_strips": MetadataKey("int", "how many strips the text was split into", "refine"),
    "crag_trimmed": MetadataKey(
        "bool", "whether the text was replaced by its evidence spans or kept strips", "trim, refine"
    ),
    "crag_evaluation_score": MetadataKey(
        "float", "the CRAG evaluator's relevance score, on its scale", "evaluate"
    ),
    "crag_document_action": MetadataKey(
        "str",
        "the item's own CRAG band: 'correct' (>= upper), 'incorrect' (< lower), else 'ambiguous'",
        "evaluate",
    ),
    "crag_action": MetadataKey(
        "str",
        "the query's CRAG action: 'correct', 'ambiguous' or 'incorrect'",
        "evaluate; composite with action thresholds",
    ),
    "crag_num_windows": MetadataKey(
        "dict[str, int]",
        "windows each model stage read the text in, e.g. {'rerank': 1, 'highlight': 2}",
        "rerank, filter, trim",
    ),
    "crag_drop_reason": MetadataKey(
        "str",
        "why the item was dropped (only on the dropped copies an adapter reports)",
        "any stage that drops",
    ),
}


def spans_metadata(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """Spans as plain dicts (``start``, ``end``, ``text``, ``score``), in order."""
    return [{"start": s.start, "end": s.end, "text": s.text, "score": s.score} for s in spans]


def stage_metadata(
    item: ProcessedText | DroppedText, action: CragAction | None = None
) -> dict[str, Any]:
    """The metadata for one kept or dropped item: what every stage that saw it said.

    Example:
        >>> from crag_integrations.types import ProcessedText
        >>> stage_metadata(ProcessedText(index=2, text="t", output_text="t"), "correct")
        {'crag_original_index': 2, 'crag_action': 'correct'}
    """
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
        metadata["crag_spans"] = spans_metadata(item.highlight.spans)
        windows["highlight"] = item.highlight.num_windows
    if item.refined is not None:
        metadata["crag_strips"] = spans_metadata(item.refined.strips)
        metadata["crag_num_strips"] = item.refined.num_strips
    if item.highlight is not None or item.refined is not None:
        metadata["crag_trimmed"] = bool(evidence_spans(item))
    if item.evaluation is not None:
        metadata["crag_evaluation_score"] = item.evaluation.score
        metadata["crag_document_action"] = item.evaluation.action
    if windows:
        metadata["crag_num_windows"] = windows
    if action is not None:
        metadata["crag_action"] = action
    if isinstance(item, DroppedText):
        metadata["crag_drop_reason"] = item.reason
    return metadata


def relevance_score(item: ProcessedText | DroppedText) -> float | None:
    """The one relevance score an item carries in its framework, or ``None`` if no stage
    judged its relevance (trimming alone does not).

    The reranker's probability wins, since output order is rerank order and the score
    should agree with it (as in LangChain's and LlamaIndex's own rerankers); then the
    grader's relevance probability; then the CRAG evaluator's score.
    """
    if item.ranked is not None:
        return item.ranked.probability
    if item.grade is not None:
        return item.grade.probability
    if item.evaluation is not None:
        return item.evaluation.score
    return None


def evidence_spans(item: ProcessedText | DroppedText) -> tuple[Span, ...]:
    """The spans a trimming stage kept of the item's text (highlighter spans or refined
    strips); the text was replaced by them exactly when this is non-empty and the item is
    kept (its ``output_text`` is then their join)."""
    if item.highlight is not None:
        return item.highlight.spans
    if item.refined is not None:
        return item.refined.strips
    return ()
