"""Measure checkpoints: run them through the roles and score the output with the pure metrics.

Every prediction goes through a role (:class:`~crag_integrations.Reranker`,
:class:`~crag_integrations.RelevanceGrader`, :class:`~crag_integrations.EvidenceHighlighter`)
on the shared engine, so a checkpoint is measured exactly as it will be served: long texts
are read in windows, heads are checked, and the post-processing (best window, label policy,
span rules) is the roles' own. Pairs are grouped by query, one role call per distinct query,
and all calls are in flight at once, so the engine still packs pairs of different queries
into shared forward passes.

The roles run on an :class:`~crag_integrations.EngineConfig` built from the arguments
(``device``, ``max_length``, ``stride``, a token budget of ``batch_size x max_length``,
``backend`` and ``quantize``) with the score cache off: every pair is scored once, so caching
would only hold memory. ``backend="onnx", quantize="int8"`` measures what the int8 mode costs a
checkpoint before it is served that way (``benchmarks/onnx_quality.py``).

Nothing here imports a model library: the roles (through the engine) do the model work.
Bi-encoders are no role; they are measured by
:func:`crag_integrations.training.evaluate_bi_encoder`.

Example:
    >>> from crag_integrations.evaluation.checkpoints import evaluate_grader
    >>> rows = [{"query": "rain?", "document": "Rain is water.", "label": 1}]
    >>> evaluate_grader("out/grader", rows).as_dict()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from crag_integrations.by_query import per_query
from crag_integrations.config import Backend, EngineConfig, Quantize
from crag_integrations.errors import IncompatibleModelError
from crag_integrations.evaluation.datasets import (
    DataSource,
    RankingQuery,
    load_rows,
    parse_span,
    require_columns,
)
from crag_integrations.evaluation.metrics import (
    ClassificationMetrics,
    RankingMetrics,
    SpanExample,
    SpanMetrics,
    classification_metrics,
    evaluate_ranking,
    rank_candidates,
    span_metrics,
)
from crag_integrations.roles import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.scoring import relevant_label_mask
from crag_integrations.types import Grade

__all__ = [
    "evaluate_grader",
    "evaluate_highlighter",
    "evaluate_reranker",
    "predict_labels",
    "predict_spans",
    "score_pairs",
]

#: A half-open ``(start, end)`` character range.
Span = tuple[int, int]
_T = TypeVar("_T")
_R = TypeVar("_R")


def _engine_config(
    model_path: str | os.PathLike[str],
    *,
    device: str | None,
    max_length: int | None,
    batch_size: int,
    stride: int = 128,
    backend: Backend = "torch",
    quantize: Quantize | None = None,
) -> EngineConfig:
    """The engine the roles run on: the caller's device, windows, batch size and back-end."""
    return EngineConfig(
        model=str(model_path),
        device=device or "auto",
        backend=backend,
        quantize=quantize,
        max_length=max_length,
        stride=stride,
        token_budget=batch_size * max_length if max_length is not None else None,
        cache_size=0,  # every pair is scored once; caching would only hold memory
    )


def score_pairs(
    model_path: str | os.PathLike[str],
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | None = None,
    backend: Backend = "torch",
    quantize: Quantize | None = None,
    show_progress: bool = False,
) -> list[float]:
    """Relevance logits of a one-logit cross-encoder for (query, document) pairs, in order.

    The scores are :meth:`Reranker.score <crag_integrations.Reranker.score>`'s: a document
    longer than ``max_length`` is read in windows and scored by its best window.

    Args:
        model_path: Checkpoint directory (or hub id).
        queries: Query per pair.
        documents: Document per pair.
        batch_size: Windows of ``max_length`` tokens per forward pass (the token budget);
            with ``max_length=None`` the engine's default token budget applies.
        max_length: Tokens per window (``None``: the model's limit, as the roles).
        device: ``"cpu"``, ``"cuda"``...; defaults to the engine's automatic choice.
        backend: ``"torch"`` or ``"onnx"`` (see :class:`~crag_integrations.EngineConfig`).
        quantize: ``"int8"`` with ``backend="onnx"``: the dynamically quantised graph.
        show_progress: Print how many pairs are being scored.

    Returns:
        One score per pair (the logit of the best window).

    Raises:
        IncompatibleModelError: The checkpoint is not a one-logit cross-encoder (a grader's
            first logit is not a relevance score, so it is refused rather than misread).
        ValueError: A query is blank, or ``queries`` and ``documents`` differ in length.
    """
    pairs = list(zip(queries, documents, strict=True))
    config = _engine_config(
        model_path,
        device=device,
        max_length=max_length,
        batch_size=batch_size,
        backend=backend,
        quantize=quantize,
    )
    reranker = Reranker(model=config)
    if show_progress:
        print(f"scoring {len(pairs)} pairs with {model_path}", file=sys.stderr)
    try:
        return per_query(pairs, reranker.ascore, in_flight=config.max_queue)
    except IncompatibleModelError as exc:
        raise IncompatibleModelError(
            f"{exc} Measure graders with evaluate_grader and highlighters with "
            "evaluate_highlighter."
        ) from exc


def predict_labels(
    model_path: str | os.PathLike[str],
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    relevant_labels: Sequence[str] | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | None = None,
    backend: Backend = "torch",
    quantize: Quantize | None = None,
    show_progress: bool = False,
) -> list[str]:
    """The label :class:`~crag_integrations.RelevanceGrader` gives each (query, document) pair.

    For a classifier that is the arg-max label of the deciding window: the most relevant
    window of a long document, with the grader's rules for which labels mean relevant (or
    ``relevant_labels``). A one-logit checkpoint is graded through a sigmoid, as the grader
    does: ``"relevant"`` from probability 0.5, else ``"not_relevant"``.

    Args:
        model_path: Checkpoint directory (its ``id2label`` names the labels).
        queries: Query per pair.
        documents: Document per pair.
        relevant_labels: Label names that mean relevant, for heads whose names do not say
            (see :func:`crag_integrations.scoring.relevant_label_mask`).
        batch_size: Windows of ``max_length`` tokens per forward pass (the token budget);
            with ``max_length=None`` the engine's default token budget applies.
        max_length: Tokens per window (``None``: the model's limit, as the roles).
        device: Device; defaults to the engine's automatic choice.
        backend: ``"torch"`` or ``"onnx"`` (see :class:`~crag_integrations.EngineConfig`).
        quantize: ``"int8"`` with ``backend="onnx"``: the dynamically quantised graph.
        show_progress: Print how many pairs are being graded.

    Returns:
        One label name per pair.

    Raises:
        IncompatibleModelError: A token-classification checkpoint, or a head of more than two
            labels whose relevant ones cannot be told without ``relevant_labels``.
    """
    grades = _grades(
        model_path,
        queries,
        documents,
        relevant_labels=relevant_labels,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        backend=backend,
        quantize=quantize,
        show_progress=show_progress,
    )
    return [grade.label for grade in grades]


def _grades(
    model_path: str | os.PathLike[str],
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    relevant_labels: Sequence[str] | None,
    batch_size: int,
    max_length: int | None,
    device: str | None,
    backend: Backend,
    quantize: Quantize | None,
    show_progress: bool,
) -> list[Grade]:
    """:meth:`RelevanceGrader.grade <crag_integrations.RelevanceGrader.grade>` of every pair."""
    pairs = list(zip(queries, documents, strict=True))
    config = _engine_config(
        model_path,
        device=device,
        max_length=max_length,
        batch_size=batch_size,
        backend=backend,
        quantize=quantize,
    )
    grader = RelevanceGrader(
        model=config,
        relevant_labels=tuple(relevant_labels) if relevant_labels is not None else None,
    )
    if show_progress:
        print(f"grading {len(pairs)} pairs with {model_path}", file=sys.stderr)
    return per_query(pairs, grader.agrade, in_flight=config.max_queue)


def predict_spans(
    model_path: str | os.PathLike[str],
    queries: Sequence[str],
    contexts: Sequence[str],
    *,
    threshold: float = 0.2,
    merge_gap_chars: int = 20,
    min_span_chars: int = 10,
    max_length: int | None = None,
    stride: int = 256,
    batch_size: int = 32,
    device: str | None = None,
    backend: Backend = "torch",
    quantize: Quantize | None = None,
    show_progress: bool = False,
) -> list[list[Span]]:
    """Evidence character spans of each context, exactly as ``EvidenceHighlighter`` finds them.

    Runs :meth:`EvidenceHighlighter.highlight <crag_integrations.EvidenceHighlighter.highlight>`
    with these arguments, and its defaults are the highlighter's (``threshold``,
    ``merge_gap_chars``, ``min_span_chars``, ``max_length`` and ``stride`` as ``doc_stride``):
    long contexts are windowed with ``stride`` tokens of overlap, every window is read on its
    own and its spans pooled with the others' (the highlighter's ``window_pooling="max"``,
    :func:`crag_integrations.scoring.extract_window_spans`), as the seed's ``.process()``
    does.

    Args:
        model_path: Checkpoint directory.
        queries: Query per row.
        contexts: Context per row.
        threshold: Probability from which a token is evidence.
        merge_gap_chars: Largest gap merged between two spans.
        min_span_chars: Shortest span kept.
        max_length: Tokens per window (``None``: the model's limit, as the highlighter).
        stride: Overlapping tokens between windows (the highlighter's ``doc_stride``).
        batch_size: Windows of ``max_length`` tokens per forward pass (the token budget);
            with ``max_length=None`` the engine's default token budget applies.
        device: Device; defaults to the engine's automatic choice.
        backend: ``"torch"`` or ``"onnx"`` (see :class:`~crag_integrations.EngineConfig`).
        quantize: ``"int8"`` with ``backend="onnx"``: the dynamically quantised graph.
        show_progress: Print how many rows are being read.

    Returns:
        Spans per row, as ``(start, end)`` character offsets.
    """
    pairs = list(zip(queries, contexts, strict=True))
    config = _engine_config(
        model_path,
        device=device,
        max_length=max_length,
        batch_size=batch_size,
        stride=stride,
        backend=backend,
        quantize=quantize,
    )
    highlighter = EvidenceHighlighter(
        model=config,
        threshold=threshold,
        max_length=max_length,
        doc_stride=stride,
        min_span_chars=min_span_chars,
        merge_gap_chars=merge_gap_chars,
    )
    if show_progress:
        print(f"highlighting {len(pairs)} rows with {model_path}", file=sys.stderr)
    highlights = per_query(pairs, highlighter.ahighlight, in_flight=config.max_queue)
    return [[(span.start, span.end) for span in h.spans] for h in highlights]


# --------------------------------------------------------------------------------------
# Evaluation of checkpoints
# --------------------------------------------------------------------------------------


def evaluate_reranker(
    model_path: str | os.PathLike[str],
    queries: Sequence[RankingQuery],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    k: int = 10,
    relevance_threshold: int = 1,
    max_length: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
    backend: Backend = "torch",
    quantize: Quantize | None = None,
    show_progress: bool = False,
) -> RankingMetrics:
    """Rerank each query's candidates with a cross-encoder and score the run.

    Args:
        model_path: One-logit cross-encoder checkpoint.
        queries: Queries with candidates (e.g. from ``load_trec_dl``).
        qrels: Graded judgments.
        k: Cut-off for nDCG and MRR.
        relevance_threshold: Grade counted as relevant by MRR and MAP (2 on TREC DL).
        max_length: Tokens per window (``None``: the model's limit, as the roles).
        batch_size: Windows of ``max_length`` tokens per forward pass (the token budget);
            with ``max_length=None`` the engine's default token budget applies.
        device: Device; defaults to the engine's automatic choice.
        backend: ``"torch"`` or ``"onnx"`` (see :class:`~crag_integrations.EngineConfig`).
        quantize: ``"int8"`` with ``backend="onnx"``: the dynamically quantised graph.
        show_progress: Print how many pairs are being scored.

    Returns:
        The ranking metrics.

    Raises:
        IncompatibleModelError: The checkpoint is not a one-logit cross-encoder.
    """
    flat_q = [q.query for q in queries for _ in q.doc_ids]
    flat_d = [t for q in queries for t in q.texts]
    scores = score_pairs(
        model_path,
        flat_q,
        flat_d,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        backend=backend,
        quantize=quantize,
        show_progress=show_progress,
    )
    return evaluate_ranking(
        rank_candidates(queries, scores), qrels, k=k, relevance_threshold=relevance_threshold
    )


def evaluate_grader(
    model_path: str | os.PathLike[str],
    data: DataSource,
    *,
    query_column: str = "query",
    document_column: str = "document",
    label_column: str = "label",
    positive_label: str | None = None,
    relevant_labels: Sequence[str] | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
    backend: Backend = "torch",
    quantize: Quantize | None = None,
    show_progress: bool = False,
) -> ClassificationMetrics:
    """Grade labelled pairs with :func:`predict_labels` and compute classification metrics.

    Args:
        model_path: Sequence-classification checkpoint.
        data: Rows with query, document and label columns; labels are compared as strings
            with the checkpoint's ``id2label`` names (for a one-logit checkpoint, graded
            through a sigmoid: ``relevant`` / ``not_relevant``).
        query_column: Query text column.
        document_column: Document text column.
        label_column: Gold label column.
        positive_label: Positive class for binary metrics; defaults to the label with the
            highest id (``"1"`` for 0/1 graders; ``"relevant"`` for one-logit heads).
        relevant_labels: Label names that mean relevant (they pick the deciding window of a
            long document). By default the grader's rules; for a local checkpoint whose
            labels those rules cannot tell apart (more than two, not OSMoSIS), the positive
            label.
        max_length: Tokens per window (``None``: the model's limit, as the roles).
        batch_size: Windows of ``max_length`` tokens per forward pass (the token budget);
            with ``max_length=None`` the engine's default token budget applies.
        device: Device; defaults to the engine's automatic choice.
        backend: ``"torch"`` or ``"onnx"`` (see :class:`~crag_integrations.EngineConfig`).
        quantize: ``"int8"`` with ``backend="onnx"``: the dynamically quantised graph.
        show_progress: Print how many pairs are being graded.

    Returns:
        The classification metrics.
    """
    rows = load_rows(data)
    require_columns(rows, (query_column, document_column, label_column), "grader evaluation")
    names = _local_label_names(model_path)
    if relevant_labels is None and names is not None and _policy_unknown(names):
        # The grader cannot tell which of these labels mean relevant. For arg-max labels that
        # only picks the deciding window of a long document, so let the positive label do it.
        relevant_labels = (positive_label if positive_label is not None else names[-1],)
    grades = _grades(
        model_path,
        [str(r[query_column]) for r in rows],
        [str(r[document_column]) for r in rows],
        relevant_labels=relevant_labels,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        backend=backend,
        quantize=quantize,
        show_progress=show_progress,
    )
    if names is None or len(names) == 1:
        # A hub checkpoint, or a one-logit head: the labels are those the grader gives.
        names = list(grades[0].distribution)
        if sorted(names) == ["not_relevant", "relevant"]:
            names = ["not_relevant", "relevant"]
    positive = positive_label if positive_label is not None else names[-1]
    gold = [str(r[label_column]) for r in rows]
    predicted = [grade.label for grade in grades]
    return classification_metrics(gold, predicted, labels=names, positive_label=positive)


def _policy_unknown(names: Sequence[str]) -> bool:
    """Whether a classifier's labels are ones the grader cannot tell relevant from not."""
    try:
        relevant_label_mask(names)
    except IncompatibleModelError:
        return len(names) > 1
    return False


def _local_label_names(model_path: str | os.PathLike[str]) -> list[str] | None:
    """A local checkpoint's ``id2label`` names in id order; ``None`` for anything else.

    Read from its ``config.json`` as ``transformers`` writes it (no ``id2label``: ``LABEL_i``
    for ``num_labels``, default 2), so that no model library is needed here.
    """
    config_file = Path(model_path).expanduser() / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    id2label = config.get("id2label")
    if id2label:
        return [str(id2label[key]) for key in sorted(id2label, key=int)]
    return [f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))]


def evaluate_highlighter(
    model_path: str | os.PathLike[str],
    data: DataSource,
    *,
    query_column: str = "query",
    context_column: str = "context",
    spans_column: str = "spans",
    threshold: float = 0.5,
    merge_gap_chars: int = 20,
    min_span_chars: int = 10,
    max_length: int | None = None,
    stride: int = 128,
    device: str | None = None,
    backend: Backend = "torch",
    quantize: Quantize | None = None,
    show_progress: bool = False,
) -> SpanMetrics:
    """Run a highlighter over rows with gold spans and compute the span metrics.

    The metrics are :func:`~crag_integrations.evaluation.metrics.span_metrics`'s: the
    acl-verbatim harness's conventions, over all rows and over the relevant rows beside them.

    Predictions are :func:`predict_spans`'s. The threshold and stride defaults are the
    evaluation protocol of the numbers in ``docs/training.md`` (threshold 0.5, the
    high-precision point; windows overlapping by 128 tokens), not the highlighter's serving
    defaults.

    Args:
        model_path: Token-classification checkpoint.
        data: Rows with query, context and spans columns (empty spans: irrelevant row).
        query_column: Query text column.
        context_column: Context text column.
        spans_column: Gold spans column.
        threshold: Probability from which a token is evidence.
        merge_gap_chars: Largest gap merged between predicted spans.
        min_span_chars: Shortest predicted span kept.
        max_length: Tokens per window (``None``: the model's limit, as the highlighter).
        stride: Overlapping tokens between windows.
        device: Device; defaults to the engine's automatic choice.
        backend: ``"torch"`` or ``"onnx"`` (see :class:`~crag_integrations.EngineConfig`).
        quantize: ``"int8"`` with ``backend="onnx"``: the dynamically quantised graph.
        show_progress: Print how many rows are being read.

    Returns:
        The span metrics.
    """
    rows = load_rows(data)
    require_columns(rows, (query_column, context_column, spans_column), "highlighter evaluation")
    contexts = [str(r[context_column]) for r in rows]
    predicted = predict_spans(
        model_path,
        [str(r[query_column]) for r in rows],
        contexts,
        threshold=threshold,
        merge_gap_chars=merge_gap_chars,
        min_span_chars=min_span_chars,
        max_length=max_length,
        stride=stride,
        device=device,
        backend=backend,
        quantize=quantize,
        show_progress=show_progress,
    )
    examples = [
        SpanExample(c, [parse_span(s, len(c)) for s in (r[spans_column] or [])], p)
        for r, c, p in zip(rows, contexts, predicted, strict=True)
    ]
    return span_metrics(examples)
