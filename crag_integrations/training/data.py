"""Training data: rows in (:func:`load_rows`), training examples out.

Rows are read by :func:`crag_integrations.evaluation.datasets.load_rows` (re-exported here),
the same reader checkpoint evaluation uses. The helpers below shape rows for each trainer:
labelled pairs and mined negatives, candidate lists with teacher scores, label ids.
``datasets`` and ``sentence-transformers`` are imported inside the functions that need them.

Example:
    >>> labelled_pairs(
    ...     [{"query": "rain?", "positive": "Rain is water."}],
    ...     query_column="query", document_column="document",
    ...     positive_column="positive", label_column="label",
    ... )
    [{'query': 'rain?', 'document': 'Rain is water.', 'label': 1.0}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crag_integrations.evaluation.datasets import (
    DataSource,
    Row,
    load_rows,
    parse_span,
    require_columns,
)
from crag_integrations.training.bi_encoder import cosine_scores

__all__ = [
    "DataSource",
    "Row",
    "candidate_lists",
    "label_id",
    "label_names",
    "labelled_pairs",
    "load_rows",
    "mine_negatives",
    "parse_span",
    "require_columns",
]


def labelled_pairs(
    rows: Sequence[Row],
    *,
    query_column: str,
    document_column: str,
    positive_column: str,
    label_column: str,
) -> list[Row]:
    """BCE pairs ``{query, document, label}`` from labelled pairs or (query, positive) pairs.

    Raises:
        ValueError: The rows have neither layout's columns.
    """
    if label_column in rows[0]:
        require_columns(rows, (query_column, document_column, label_column), "labelled pairs")
        return [
            {
                "query": r[query_column],
                "document": r[document_column],
                "label": float(r[label_column]),
            }
            for r in rows
        ]
    if positive_column in rows[0]:
        require_columns(rows, (query_column, positive_column), "(query, positive) pairs")
        return [
            {"query": r[query_column], "document": r[positive_column], "label": 1.0} for r in rows
        ]
    raise ValueError(
        f"BCE training needs labelled pairs ({query_column}, {document_column}, {label_column}) "
        f"or (query, positive) pairs ({query_column}, {positive_column}); got {sorted(rows[0])}"
    )


def mine_negatives(
    pairs: Sequence[Row], bi_encoder: Any, num_negatives: int, show_progress: bool
) -> list[Row]:
    """Negatives for each positive pair, mined from all documents with a bi-encoder.

    Uses sentence-transformers' ``mine_hard_negatives``; returns label-0 pairs only.
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    positives = [p for p in pairs if p["label"] >= 0.5]
    corpus = list(dict.fromkeys(p["document"] for p in pairs))
    mined = mine_hard_negatives(
        Dataset.from_dict(
            {
                "query": [p["query"] for p in positives],
                "positive": [p["document"] for p in positives],
            }
        ),
        bi_encoder,
        corpus=corpus,
        num_negatives=num_negatives,
        range_min=1,
        range_max=max(num_negatives * 4, 20),
        # A candidate scoring within 5% of the positive is too likely to be an unlabelled
        # positive (judgments are incomplete), so it is not used as a negative.
        relative_margin=0.05,
        sampling_strategy="top",
        output_format="labeled-pair",
        verbose=show_progress,
    )
    columns = mined.column_names
    return [
        {"query": r[columns[0]], "document": r[columns[1]], "label": 0.0}
        for r in mined
        if float(r[columns[2]]) < 0.5
    ]


def candidate_lists(
    rows: Sequence[Row],
    teacher: Any,
    *,
    query_column: str,
    documents_column: str,
    scores_column: str,
    labels_column: str,
    document_column: str,
    label_column: str,
    show_progress: bool,
) -> list[Row]:
    """Candidate lists ``{query, documents, scores, labels}`` for listwise distillation.

    Rows are lists already, or labelled pairs grouped by query. Missing teacher scores are the
    ``teacher`` bi-encoder's cosine similarities.

    Raises:
        ValueError: Scores are missing and there is no teacher, or a list's lengths differ.
    """
    if documents_column in rows[0]:
        require_columns(rows, (query_column, documents_column), "candidate lists")
        lists = [
            {
                "query": r[query_column],
                "documents": list(r[documents_column]),
                "scores": list(r[scores_column]) if r.get(scores_column) is not None else None,
                "labels": list(r[labels_column])
                if r.get(labels_column) is not None
                else [0.0] * len(r[documents_column]),
            }
            for r in rows
        ]
    else:
        require_columns(rows, (query_column, document_column), "candidate lists or pairs")
        grouped: dict[str, Row] = {}
        for r in rows:
            item = grouped.setdefault(
                r[query_column],
                {"query": r[query_column], "documents": [], "scores": None, "labels": []},
            )
            item["documents"].append(r[document_column])
            item["labels"].append(float(r.get(label_column, 0.0)))
        lists = list(grouped.values())
    missing = [item for item in lists if item["scores"] is None]
    if missing:
        if teacher is None:
            raise ValueError(
                "distillation needs teacher scores: give a scores column or a bi_encoder"
            )
        for item, scores in zip(
            missing, cosine_scores(teacher, missing, show_progress), strict=True
        ):
            item["scores"] = scores
    for item in lists:
        if not (len(item["documents"]) == len(item["scores"]) == len(item["labels"])):
            raise ValueError(f"candidate list of {item['query']!r} has mismatched lengths")
    return lists


def label_names(rows: Sequence[Row], column: str) -> list[str]:
    """The distinct labels of ``column`` as names, numerically sorted when they are numbers."""
    values = {r[column] for r in rows}
    try:
        return [str(v) for v in sorted(values, key=lambda v: (int(v), str(v)))]
    except (TypeError, ValueError):
        return sorted(str(v) for v in values)


def label_id(value: Any, label2id: Mapping[str, int], names: Sequence[str]) -> int:
    """The id of ``value`` in ``label2id``; ``ValueError`` naming the known labels if absent."""
    key = str(value)
    if key not in label2id:
        raise ValueError(f"label {value!r} is not one of {list(names)}")
    return label2id[key]
