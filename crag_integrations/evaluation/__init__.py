"""Offline evaluation: pure metrics, loaders of the shared data, and checkpoint measurement.

* :mod:`~crag_integrations.evaluation.metrics`: ranking (``trec_eval`` conventions),
  classification and evidence-span metrics (the acl-verbatim harness's conventions: all rows,
  and relevant rows beside them), and the agreement of two systems (Kendall's tau, bootstrap
  intervals), pure Python over plain lists.
* :mod:`~crag_integrations.evaluation.datasets`: TREC DL, XQuAD, WikiQA and SciFact loaders
  (``$CRAG_DATA_DIR``), and the reader of your own rows that training shares.
* :mod:`~crag_integrations.evaluation.checkpoints`: run a checkpoint through the roles and
  score it (``evaluate_reranker``, ``evaluate_grader``, ...; also importable from
  :mod:`crag_integrations.training`).

Importing this package loads no torch and no model.

Example:
    >>> qrels = {"q1": {"d1": 3, "d2": 0, "d3": 1}}
    >>> result = evaluate_ranking({"q1": ["d3", "d1", "d9"]}, qrels, k=10)
    >>> round(result.ndcg, 4), result.mrr, result.num_queries
    (0.7967, 1.0, 1)
"""

from crag_integrations.evaluation.datasets import (
    DATA_DIR_ENV,
    RankingQuery,
    SciFactAbstract,
    SciFactClaim,
    WikiQARow,
    XQuADQuestion,
    load_scifact,
    load_trec_dl,
    load_wikiqa,
    load_xquad,
    resolve_data_dir,
    sentence_spans,
)
from crag_integrations.evaluation.datasets import (
    read_qrels as read_qrels,  # public before the split, though never in __all__
)
from crag_integrations.evaluation.metrics import (
    ClassificationMetrics,
    RankingMetrics,
    SpanExample,
    SpanMetrics,
    SpanScores,
    average_precision,
    bootstrap_interval,
    classification_metrics,
    dcg_at_k,
    evaluate_ranking,
    kendall_tau,
    ndcg_at_k,
    paired_bootstrap_interval,
    rank_by_scores,
    reciprocal_rank_at_k,
    span_metrics,
    span_word_counts,
)

__all__ = [
    "DATA_DIR_ENV",
    "ClassificationMetrics",
    "RankingMetrics",
    "RankingQuery",
    "SciFactAbstract",
    "SciFactClaim",
    "SpanExample",
    "SpanMetrics",
    "SpanScores",
    "WikiQARow",
    "XQuADQuestion",
    "average_precision",
    "bootstrap_interval",
    "classification_metrics",
    "dcg_at_k",
    "evaluate_ranking",
    "kendall_tau",
    "load_scifact",
    "load_trec_dl",
    "load_wikiqa",
    "load_xquad",
    "ndcg_at_k",
    "paired_bootstrap_interval",
    "rank_by_scores",
    "reciprocal_rank_at_k",
    "resolve_data_dir",
    "sentence_spans",
    "span_metrics",
    "span_word_counts",
]
