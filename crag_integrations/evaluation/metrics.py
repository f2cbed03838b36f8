"""Pure ranking, classification and evidence-span metrics over plain lists and mappings.

No torch, no numpy: every metric can be checked against hand-computed cases and reused on any
model's output.

Ranking metrics follow ``trec_eval``'s conventions:

* a document missing from the judgments (unjudged) has grade 0;
* nDCG uses linear gain (the grade itself) and ``log2(rank + 1)`` discounts, and the ideal
  ranking is built from *all* judged documents of the query, retrieved or not;
* binary metrics (MRR, MAP) count a document as relevant when its grade is at least
  ``relevance_threshold``. The default, 1, is ``trec_eval``'s own (any grade above 0). The TREC
  Deep Learning track binarises *passage* judgments at grade >= 2 ("highly relevant" and
  "perfectly relevant"; ``trec_eval -l 2``), so pass ``relevance_threshold=2`` to reproduce the
  track's MRR@10 and MAP on DL19/DL21; nDCG uses the grades and ignores the threshold;
* a query is averaged only when it has at least one judgment (``trec_eval`` skips queries absent
  from the qrels); a judged query that has no relevant document scores 0.

Span metrics are those of the acl-verbatim highlighter card's evaluation harness
(``acl_verbatim.eval.span_metrics``), convention for convention: words are maximal runs of
non-whitespace; every count is summed over all rows (micro), including rows whose gold span
list is empty, so text highlighted on an irrelevant row is a false positive; predictions are
scored as returned, never merged; and the same metrics are reported over the relevant rows
(those with gold spans) beside the all-row headline. :func:`span_metrics` states each one.

Example:
    >>> qrels = {"q1": {"d1": 3, "d2": 0, "d3": 1}}
    >>> result = evaluate_ranking({"q1": ["d3", "d1", "d9"]}, qrels, k=10)
    >>> round(result.ndcg, 4), result.mrr, result.num_queries
    (0.7967, 1.0, 1)
"""

from __future__ import annotations

import math
import operator
import random
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from crag_integrations.evaluation.datasets import RankingQuery

__all__ = [
    "DEFAULT_CONTAINMENT_THRESHOLDS",
    "DEFAULT_IOU_THRESHOLDS",
    "ClassificationMetrics",
    "RankingMetrics",
    "SpanExample",
    "SpanMetrics",
    "SpanScores",
    "average_precision",
    "bootstrap_interval",
    "classification_metrics",
    "dcg_at_k",
    "evaluate_ranking",
    "kendall_tau",
    "ndcg_at_k",
    "paired_bootstrap_interval",
    "rank_by_scores",
    "rank_candidates",
    "reciprocal_rank_at_k",
    "span_metrics",
    "span_word_counts",
]

#: A half-open ``(start, end)`` character range.
Span = tuple[int, int]

# --------------------------------------------------------------------------------------
# Agreement between two systems
# --------------------------------------------------------------------------------------


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two score lists of the same items (ties corrected).

    The rank agreement of two scorings of one candidate list: 1 when they order every pair
    of items the same way, -1 when they reverse every pair. Ties count as in
    ``scipy.stats.kendalltau`` (variant ``"b"``); a list whose scores are all equal orders
    nothing, so its tau is undefined and ``nan`` is returned.

    Args:
        x: Scores of the items by one system.
        y: Scores of the same items, in the same order, by the other.

    Returns:
        tau-b in [-1, 1], or ``nan`` when either list has no untied pair.

    Raises:
        ValueError: The lists differ in length, have fewer than two items or hold a NaN.

    Example:
        >>> kendall_tau([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
        0.3333333333333333
    """
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs lists of one length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError(f"kendall_tau needs at least two items, got {len(x)}")
    if any(math.isnan(v) for v in (*x, *y)):
        raise ValueError("kendall_tau got a NaN score; rank agreement is undefined for it")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            tied_x, tied_y = x[i] == x[j], y[i] == y[j]  # compared, not subtracted: inf - inf
            if tied_x and tied_y:
                continue  # tied in both: in neither denominator term
            if tied_x:
                ties_x += 1
            elif tied_y:
                ties_y += 1
            elif (x[i] > x[j]) == (y[i] > y[j]):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else math.nan


def paired_bootstrap_interval(
    differences: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences.

    Resamples the items (queries, rows) with replacement and returns the interval holding
    ``confidence`` of the resampled means: the noise band of a per-query difference between two
    systems measured on the same items. An interval that excludes 0 is a difference the
    sample supports; one that includes 0 is within noise.

    Args:
        differences: One paired difference per item (e.g. per-query nDCG@10 of B minus A).
        confidence: Share of resampled means inside the interval, in (0, 1).
        resamples: Bootstrap resamples.
        seed: Seed of the resampling, so a report can be reproduced.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: No differences, a NaN among them, a confidence outside (0, 1) or fewer
            than one resample.

    Example:
        >>> paired_bootstrap_interval([0.5, 0.5, 0.5])
        (0.5, 0.5)
    """
    if not differences:
        raise ValueError("paired_bootstrap_interval needs at least one difference")
    if any(math.isnan(d) for d in differences):
        raise ValueError("paired_bootstrap_interval got a NaN difference")
    n = len(differences)
    return bootstrap_interval(
        n,
        lambda rows: sum(differences[i] for i in rows) / n,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def bootstrap_interval(
    size: int,
    statistic: Callable[[Sequence[int]], float],
    *,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of any statistic of ``size`` items.

    ``statistic`` gets the positions of one resample (``size`` positions drawn with
    replacement) and returns its value, e.g. the MCC or word-F1 difference of two systems
    over those rows; the interval holds ``confidence`` of the resampled values.
    :func:`paired_bootstrap_interval` is this with the mean of the differences.

    Args:
        size: Number of items.
        statistic: Value of the statistic over the items at the given positions.
        confidence: Share of resampled values inside the interval, in (0, 1).
        resamples: Bootstrap resamples.
        seed: Seed of the resampling, so a report can be reproduced.

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: No items, a confidence outside (0, 1) or fewer than one resample.

    Example:
        >>> bootstrap_interval(4, lambda rows: 1.0)
        (1.0, 1.0)
    """
    if size < 1:
        raise ValueError(f"bootstrap_interval needs at least one item, got {size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = random.Random(seed)
    positions = range(size)
    values = sorted(statistic(rng.choices(positions, k=size)) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = values[math.floor(tail * (resamples - 1))]
    high = values[math.ceil((1 - tail) * (resamples - 1))]
    return low, high


# --------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------


def rank_by_scores(doc_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Order ``doc_ids`` by descending score; ties keep their input order.

    ``trec_eval`` breaks ties by document id instead; with real-valued model scores ties are
    rare, and keeping the candidate order makes a constant scorer reproduce the input ranking.

    Args:
        doc_ids: Candidate document ids.
        scores: One score per id, higher is more relevant.

    Returns:
        The ids, best first.

    Raises:
        ValueError: If the two sequences differ in length.
    """
    if len(doc_ids) != len(scores):
        raise ValueError(f"got {len(doc_ids)} doc ids but {len(scores)} scores")
    order = sorted(range(len(doc_ids)), key=lambda i: -scores[i])
    return [doc_ids[i] for i in order]


def rank_candidates(
    queries: Sequence[RankingQuery], flat_scores: Sequence[float]
) -> dict[str, list[str]]:
    """Each query's candidates ranked by their scores (:func:`rank_by_scores`).

    Args:
        queries: Queries with candidates.
        flat_scores: One score per candidate, query after query, in candidate order.

    Returns:
        Query id -> document ids, best first.

    Raises:
        ValueError: If there are fewer scores than candidates.

    Example:
        >>> q = RankingQuery("q1", "rain?", ("d1", "d2"), ("Tokyo.", "Rain falls."))
        >>> rank_candidates([q], [0.1, 0.9])
        {'q1': ['d2', 'd1']}
    """
    rankings: dict[str, list[str]] = {}
    offset = 0
    for q in queries:
        n = len(q.doc_ids)
        rankings[q.qid] = rank_by_scores(list(q.doc_ids), list(flat_scores[offset : offset + n]))
        offset += n
    return rankings


def dcg_at_k(gains: Sequence[float], k: int) -> float:
    """Discounted cumulative gain of the first ``k`` gains (linear gain, log2 discount).

    Args:
        gains: Gains in rank order (rank 1 first).
        k: Cut-off; must be positive.

    Returns:
        ``sum(gain_i / log2(i + 1))`` for ranks ``i = 1..k``.
    """
    _check_k(k)
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]) if g > 0)


def ndcg_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranked list, with ``trec_eval``'s conventions (unjudged = 0).

    Args:
        ranking: Document ids, best first. Duplicates after the first occurrence are ignored.
        judgments: Graded judgments of this query (doc id -> grade); grades <= 0 give no gain.
        k: Cut-off.

    Returns:
        nDCG@k in ``[0, 1]``; 0 when no judged document has a positive grade.
    """
    ranking = _dedupe(ranking)
    gains = [max(judgments.get(doc, 0), 0) for doc in ranking]
    ideal = sorted((g for g in judgments.values() if g > 0), reverse=True)
    ideal_dcg = dcg_at_k(ideal, k)
    if ideal_dcg == 0:
        return 0.0
    return dcg_at_k(gains, k) / ideal_dcg


def reciprocal_rank_at_k(
    ranking: Sequence[str],
    judgments: Mapping[str, int],
    k: int = 10,
    *,
    relevance_threshold: int = 1,
) -> float:
    """Reciprocal rank of the first relevant document within the top ``k``.

    Args:
        ranking: Document ids, best first.
        judgments: Graded judgments of this query.
        k: Cut-off.
        relevance_threshold: Minimum grade that counts as relevant.

    Returns:
        ``1 / rank`` of the first relevant document, or 0 if none is in the top ``k``.
    """
    _check_k(k)
    for rank, doc in enumerate(_dedupe(ranking)[:k], start=1):
        if judgments.get(doc, 0) >= relevance_threshold:
            return 1.0 / rank
    return 0.0


def average_precision(
    ranking: Sequence[str],
    judgments: Mapping[str, int],
    *,
    relevance_threshold: int = 1,
    k: int | None = None,
) -> float:
    """Average precision of one ranked list (``trec_eval``'s ``map`` for one query).

    The denominator is the number of relevant *judged* documents, retrieved or not.

    Args:
        ranking: Document ids, best first.
        judgments: Graded judgments of this query.
        relevance_threshold: Minimum grade that counts as relevant.
        k: Optional cut-off; ``None`` uses the whole list.

    Returns:
        Average precision in ``[0, 1]``; 0 when the query has no relevant document.
    """
    num_relevant = sum(1 for g in judgments.values() if g >= relevance_threshold)
    if num_relevant == 0:
        return 0.0
    ranking = _dedupe(ranking)
    if k is not None:
        _check_k(k)
        ranking = ranking[:k]
    hits = 0
    total = 0.0
    for rank, doc in enumerate(ranking, start=1):
        if judgments.get(doc, 0) >= relevance_threshold:
            hits += 1
            total += hits / rank
    return total / num_relevant


@dataclass(frozen=True)
class RankingMetrics:
    """Mean ranking metrics over the judged queries of a run.

    Attributes:
        ndcg: Mean nDCG@k.
        mrr: Mean reciprocal rank at k.
        map: Mean average precision over the whole candidate list.
        k: The cut-off used for nDCG and MRR.
        relevance_threshold: Grade from which MRR and MAP count a document as relevant.
        num_queries: Queries averaged (those with judgments).
        per_query_ndcg: nDCG@k of each averaged query.
    """

    ndcg: float
    mrr: float
    map: float
    k: int
    relevance_threshold: int
    num_queries: int
    per_query_ndcg: Mapping[str, float] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, float | int]:
        """The headline numbers as a flat dict (for JSON and tables)."""
        return {
            f"ndcg@{self.k}": self.ndcg,
            f"mrr@{self.k}": self.mrr,
            "map": self.map,
            "relevance_threshold": self.relevance_threshold,
            "num_queries": self.num_queries,
        }


def evaluate_ranking(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    k: int = 10,
    relevance_threshold: int = 1,
) -> RankingMetrics:
    """Mean nDCG@k, MRR@k and MAP of a run, averaged over queries that have judgments.

    Args:
        rankings: Query id -> document ids, best first.
        qrels: Query id -> (document id -> grade).
        k: Cut-off for nDCG and MRR.
        relevance_threshold: Minimum grade counted as relevant by MRR and MAP (2 for TREC DL
            passage judgments, see the module docstring).

    Returns:
        The averaged metrics.

    Raises:
        ValueError: If no query of the run has judgments.
    """
    _check_k(k)
    ndcgs: dict[str, float] = {}
    mrrs: list[float] = []
    aps: list[float] = []
    for qid, ranking in rankings.items():
        judgments = qrels.get(qid)
        if not judgments:
            continue
        ndcgs[qid] = ndcg_at_k(ranking, judgments, k)
        mrrs.append(
            reciprocal_rank_at_k(ranking, judgments, k, relevance_threshold=relevance_threshold)
        )
        aps.append(average_precision(ranking, judgments, relevance_threshold=relevance_threshold))
    if not ndcgs:
        raise ValueError("none of the ranked queries has judgments; check that the query ids match")
    n = len(ndcgs)
    return RankingMetrics(
        ndcg=sum(ndcgs.values()) / n,
        mrr=sum(mrrs) / n,
        map=sum(aps) / n,
        k=k,
        relevance_threshold=relevance_threshold,
        num_queries=n,
        per_query_ndcg=ndcgs,
    )


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassificationMetrics:
    """Classification quality.

    For two classes, precision/recall/F1 are those of ``positive_label``; for more classes they
    are macro averages over the labels. MCC is Matthews' correlation (Gorodkin's multi-class
    form, which equals the binary formula for two classes).

    Attributes:
        accuracy: Fraction of exact matches.
        precision: Binary or macro precision.
        recall: Binary or macro recall.
        f1: Binary or macro F1.
        mcc: Matthews correlation coefficient, in ``[-1, 1]``.
        support: Number of examples.
        average: ``"binary"`` or ``"macro"``.
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    mcc: float
    support: int
    average: str

    def as_dict(self) -> dict[str, float | int | str]:
        """The metrics as a flat dict."""
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mcc": self.mcc,
            "support": self.support,
            "average": self.average,
        }


def classification_metrics(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    *,
    labels: Sequence[Hashable] | None = None,
    positive_label: Hashable = 1,
) -> ClassificationMetrics:
    """Accuracy, precision, recall, F1 and MCC of predicted labels.

    Args:
        y_true: Gold labels.
        y_pred: Predicted labels, same length.
        labels: The label set; defaults to the labels seen in either list. With two labels
            the binary metrics of ``positive_label`` are reported, otherwise macro averages.
        positive_label: The positive class for two-label problems.

    Returns:
        The metrics; undefined ratios (0/0) are 0, as in scikit-learn with ``zero_division=0``.

    Raises:
        ValueError: If the lists are empty or differ in length.

    Example:
        >>> m = classification_metrics([1, 0, 1, 1], [1, 0, 0, 1])
        >>> m.accuracy, m.precision, round(m.recall, 3)
        (0.75, 1.0, 0.667)
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"got {len(y_true)} gold labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("cannot compute classification metrics of zero examples")
    label_set = list(labels) if labels is not None else _ordered_labels([*y_true, *y_pred])
    n = len(y_true)
    accuracy = sum(t == p for t, p in zip(y_true, y_pred, strict=True)) / n
    per_label = {lab: _precision_recall_f1(y_true, y_pred, lab) for lab in label_set}
    if len(label_set) <= 2 and positive_label in per_label:
        precision, recall, f1 = per_label[positive_label]
        average = "binary"
    else:
        precision = sum(v[0] for v in per_label.values()) / len(per_label)
        recall = sum(v[1] for v in per_label.values()) / len(per_label)
        f1 = sum(v[2] for v in per_label.values()) / len(per_label)
        average = "macro"
    return ClassificationMetrics(
        accuracy=accuracy,
        precision=precision,
        recall=recall,
        f1=f1,
        mcc=_matthews(y_true, y_pred, label_set),
        support=n,
        average=average,
    )


def _precision_recall_f1(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], label: Hashable
) -> tuple[float, float, float]:
    tp = sum(t == label and p == label for t, p in zip(y_true, y_pred, strict=True))
    fp = sum(t != label and p == label for t, p in zip(y_true, y_pred, strict=True))
    fn = sum(t == label and p != label for t, p in zip(y_true, y_pred, strict=True))
    return _prf(tp, fp, fn)


def _matthews(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable]
) -> float:
    n = len(y_true)
    correct = sum(t == p for t, p in zip(y_true, y_pred, strict=True))
    true_counts = [sum(t == lab for t in y_true) for lab in labels]
    pred_counts = [sum(p == lab for p in y_pred) for lab in labels]
    numerator = correct * n - sum(t * p for t, p in zip(true_counts, pred_counts, strict=True))
    denominator = math.sqrt(n * n - sum(p * p for p in pred_counts)) * math.sqrt(
        n * n - sum(t * t for t in true_counts)
    )
    return numerator / denominator if denominator else 0.0


def _ordered_labels(values: Iterable[Hashable]) -> list[Hashable]:
    seen: dict[Hashable, None] = {}
    for value in values:
        seen.setdefault(value, None)
    try:
        return sorted(seen)  # type: ignore[type-var]
    except TypeError:
        return list(seen)


# --------------------------------------------------------------------------------------
# Evidence spans
# --------------------------------------------------------------------------------------

# A word is a maximal run of non-whitespace, so punctuation stays part of its word
# ("F1-score" is one word) or is a word of its own ("results : good" is three).
_WORD = re.compile(r"\S+")

#: The acl-verbatim harness's thresholds (``acl_verbatim.eval.span_metrics``).
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
DEFAULT_CONTAINMENT_THRESHOLDS: tuple[float, ...] = (0.5, 0.8, 1.0)


@dataclass(frozen=True)
class SpanExample:
    """One scored row: a context with its gold and predicted evidence character spans.

    Spans are half-open ``(start, end)`` character offsets into ``context`` with
    ``0 <= start < end <= len(context)``. An empty ``gold`` marks an irrelevant row.
    Predictions are scored as given: overlapping or duplicate spans are not merged.
    """

    context: str
    gold: Sequence[Span]
    predicted: Sequence[Span]


@dataclass(frozen=True)
class SpanScores:
    """Span-extraction quality over a set of rows; every count is summed over the rows (micro).

    Attributes:
        word_precision: Predicted words that are gold / predicted words. Words are maximal
            runs of non-whitespace; a word is predicted (gold) when any of its characters lies
            inside a predicted (gold) span.
        word_recall: Predicted gold words / gold words.
        word_f1: F1 of word precision and recall.
        span_precision: IoU threshold -> matched predictions / predictions, with greedy
            one-to-one matching of (prediction, gold) pairs in decreasing IoU while IoU >= t.
        span_recall: IoU threshold -> matched gold spans / gold spans.
        span_f1: IoU threshold -> F1 of span precision and recall.
        containment_precision: Threshold -> precise predictions / predictions; a prediction
            is precise when at least that share of its own characters lies inside one single
            gold span.
        containment_recall: Threshold -> gold spans that contain a precise prediction / gold
            spans.
        containment_f1: Threshold -> F1 of containment precision and recall.
        gold_coverage_recall: Threshold -> share of gold spans with at least that share of
            their characters covered by the union of the row's predictions.
        recall_any_overlap: Share of gold spans that some prediction overlaps.
        over_prediction_ratio: Predicted spans / gold spans (0 without gold spans).
        num_rows: Rows scored.
        num_gold_spans: Gold spans over the rows.
        num_predicted_spans: Predicted spans over the rows.
    """

    word_precision: float
    word_recall: float
    word_f1: float
    span_precision: Mapping[float, float]
    span_recall: Mapping[float, float]
    span_f1: Mapping[float, float]
    containment_precision: Mapping[float, float]
    containment_recall: Mapping[float, float]
    containment_f1: Mapping[float, float]
    gold_coverage_recall: Mapping[float, float]
    recall_any_overlap: float
    over_prediction_ratio: float
    num_rows: int
    num_gold_spans: int
    num_predicted_spans: int

    def as_dict(self) -> dict[str, float | int]:
        """The metrics as a flat dict (``span_f1@0.5``, ``containment_f1@0.8`` ...)."""
        flat: dict[str, float | int] = {
            "word_precision": self.word_precision,
            "word_recall": self.word_recall,
            "word_f1": self.word_f1,
        }
        by_threshold = (
            ("span_precision", self.span_precision),
            ("span_recall", self.span_recall),
            ("span_f1", self.span_f1),
            ("containment_precision", self.containment_precision),
            ("containment_recall", self.containment_recall),
            ("containment_f1", self.containment_f1),
            ("gold_coverage_recall", self.gold_coverage_recall),
        )
        for name, values in by_threshold:
            flat.update({f"{name}@{t:g}": v for t, v in values.items()})
        flat.update(
            {
                "recall_any_overlap": self.recall_any_overlap,
                "over_prediction_ratio": self.over_prediction_ratio,
                "num_rows": self.num_rows,
                "num_gold_spans": self.num_gold_spans,
                "num_predicted_spans": self.num_predicted_spans,
            }
        )
        return flat


@dataclass(frozen=True)
class SpanMetrics(SpanScores):
    """Span-extraction quality over all rows (irrelevant rows included), and relevant rows only.

    The fields inherited from :class:`SpanScores` are the all-row headline; ``relevant_rows``
    holds the same metrics over the rows that have gold spans. The acl-verbatim card reports
    a mix of the two: its span F1 at IoU 0.3 and containment F1 at 0.5 and 0.8 are
    relevant-row figures, its other numbers all-row ones.

    Attributes:
        relevant_rows: The metrics over the rows with at least one gold span.
    """

    relevant_rows: SpanScores

    def as_dict(self) -> dict[str, float | int]:
        """All-row metrics as :meth:`SpanScores.as_dict`, then ``relevant_rows.<name>``."""
        flat = super().as_dict()
        flat.update({f"relevant_rows.{k}": v for k, v in self.relevant_rows.as_dict().items()})
        return flat


def span_metrics(
    examples: Iterable[SpanExample],
    *,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    containment_thresholds: Sequence[float] = DEFAULT_CONTAINMENT_THRESHOLDS,
    coverage_thresholds: Sequence[float] | None = None,
) -> SpanMetrics:
    """Score predicted evidence spans against gold spans as the acl-verbatim harness does.

    Every count (word TP/FP/FN, matched spans, precise predictions, recalled, covered and
    overlapped gold spans, span totals) is summed over the rows before any ratio is taken,
    irrelevant rows included: anything predicted on a row without gold spans is a false
    positive. Predictions are scored as returned, so two copies of one correct span give
    IoU precision 0.5. IoU matching is greedy and one-to-one: (prediction, gold) pairs are
    taken in decreasing IoU (ties: the later prediction, then the later gold span first, as
    the harness's reverse sort of ``(iou, prediction index, gold index)`` orders them) while
    IoU >= t, skipping pairs whose prediction or gold span is already matched.

    Args:
        examples: Rows to score.
        iou_thresholds: IoU thresholds for span precision/recall/F1, each in ``(0, 1]``.
        containment_thresholds: Thresholds for containment precision/recall/F1, in ``(0, 1]``.
        coverage_thresholds: Thresholds for gold-coverage recall, in ``(0, 1]``; ``None``
            uses ``containment_thresholds`` (the harness uses 0.5, 0.8 and 1.0 for both).

    Returns:
        The all-row metrics with the relevant-row metrics beside them; 0/0 is 0.

    Raises:
        ValueError: If a threshold is outside ``(0, 1]``, or a span is not a non-empty
            ``(start, end)`` range of integers inside its context (the harness silently
            drops such predictions; drop or fix them before scoring).

    Example:
        >>> row = SpanExample("Rain falls. Sun shines.", gold=[(0, 11)], predicted=[(0, 4)])
        >>> m = span_metrics([row])
        >>> m.word_precision, m.word_recall, m.span_f1[0.3], m.span_f1[0.5]
        (1.0, 0.5, 1.0, 0.0)
    """
    coverage = containment_thresholds if coverage_thresholds is None else coverage_thresholds
    thresholds = _Thresholds(
        iou=_checked_thresholds(iou_thresholds, "iou_thresholds"),
        containment=_checked_thresholds(containment_thresholds, "containment_thresholds"),
        coverage=_checked_thresholds(coverage, "coverage_thresholds"),
    )
    all_rows = _Tally.empty(thresholds)
    relevant = _Tally.empty(thresholds)
    for index, example in enumerate(examples):
        limit = len(example.context)
        gold = _checked_spans(example.gold, limit, index, "gold")
        predicted = _checked_spans(example.predicted, limit, index, "predicted")
        row = _row_tally(example.context, gold, predicted, thresholds)
        all_rows.add(row)
        if gold:
            relevant.add(row)
    return SpanMetrics(**vars(all_rows.scores()), relevant_rows=relevant.scores())


@dataclass(frozen=True)
class _Thresholds:
    iou: tuple[float, ...]
    containment: tuple[float, ...]
    coverage: tuple[float, ...]


@dataclass
class _Tally:
    """Counts of one row, or summed over rows."""

    rows: int = 0
    gold: int = 0
    predicted: int = 0
    word_tp: int = 0
    word_fp: int = 0
    word_fn: int = 0
    iou_matches: dict[float, int] = field(default_factory=dict)
    precise: dict[float, int] = field(default_factory=dict)
    recalled: dict[float, int] = field(default_factory=dict)
    covered: dict[float, int] = field(default_factory=dict)
    overlapped: int = 0

    @classmethod
    def empty(cls, thresholds: _Thresholds) -> _Tally:
        return cls(
            iou_matches=dict.fromkeys(thresholds.iou, 0),
            precise=dict.fromkeys(thresholds.containment, 0),
            recalled=dict.fromkeys(thresholds.containment, 0),
            covered=dict.fromkeys(thresholds.coverage, 0),
        )

    def add(self, other: _Tally) -> None:
        self.rows += other.rows
        self.gold += other.gold
        self.predicted += other.predicted
        self.word_tp += other.word_tp
        self.word_fp += other.word_fp
        self.word_fn += other.word_fn
        self.overlapped += other.overlapped
        for mine, theirs in (
            (self.iou_matches, other.iou_matches),
            (self.precise, other.precise),
            (self.recalled, other.recalled),
            (self.covered, other.covered),
        ):
            for t, n in theirs.items():
                mine[t] += n

    def scores(self) -> SpanScores:
        word_p, word_r, word_f = _prf(self.word_tp, self.word_fp, self.word_fn)
        span_p = {t: _ratio(n, self.predicted) for t, n in self.iou_matches.items()}
        span_r = {t: _ratio(n, self.gold) for t, n in self.iou_matches.items()}
        cont_p = {t: _ratio(n, self.predicted) for t, n in self.precise.items()}
        cont_r = {t: _ratio(n, self.gold) for t, n in self.recalled.items()}
        return SpanScores(
            word_precision=word_p,
            word_recall=word_r,
            word_f1=word_f,
            span_precision=span_p,
            span_recall=span_r,
            span_f1={t: _harmonic(span_p[t], span_r[t]) for t in span_p},
            containment_precision=cont_p,
            containment_recall=cont_r,
            containment_f1={t: _harmonic(cont_p[t], cont_r[t]) for t in cont_p},
            gold_coverage_recall={t: _ratio(n, self.gold) for t, n in self.covered.items()},
            recall_any_overlap=_ratio(self.overlapped, self.gold),
            over_prediction_ratio=_ratio(self.predicted, self.gold),
            num_rows=self.rows,
            num_gold_spans=self.gold,
            num_predicted_spans=self.predicted,
        )


def span_word_counts(
    context: str, gold: Sequence[Span], predicted: Sequence[Span]
) -> tuple[int, int, int]:
    """One row's word counts ``(tp, fp, fn)``, as :func:`span_metrics` sums them.

    A word (maximal run of non-whitespace) is gold when a gold span overlaps it and
    predicted when a predicted span does; word precision, recall and F1 are these counts
    summed over rows. Per-row counts let a caller resample rows cheaply (e.g. with
    :func:`bootstrap_interval`).

    Example:
        >>> span_word_counts("the cat sat", [(4, 7)], [(4, 11)])
        (1, 1, 0)
    """
    tp = fp = fn = 0
    for match in _WORD.finditer(context):
        word = (match.start(), match.end())
        in_gold = any(_overlap(word, g) > 0 for g in gold)
        in_pred = any(_overlap(word, p) > 0 for p in predicted)
        tp += in_gold and in_pred
        fp += in_pred and not in_gold
        fn += in_gold and not in_pred
    return tp, fp, fn


def _row_tally(
    context: str, gold: Sequence[Span], predicted: Sequence[Span], thresholds: _Thresholds
) -> _Tally:
    tally = _Tally.empty(thresholds)
    tally.rows = 1
    tally.gold = len(gold)
    tally.predicted = len(predicted)
    tally.word_tp, tally.word_fp, tally.word_fn = span_word_counts(context, gold, predicted)
    pairs = sorted(
        ((_iou(p, g), i, j) for i, p in enumerate(predicted) for j, g in enumerate(gold)),
        reverse=True,
    )
    for t in thresholds.iou:
        tally.iou_matches[t] = _greedy_matches(pairs, t)
    for t in thresholds.containment:
        recalled: set[int] = set()
        for p in predicted:
            inside = {j for j, g in enumerate(gold) if _overlap(p, g) / (p[1] - p[0]) >= t}
            tally.precise[t] += bool(inside)
            recalled |= inside
        tally.recalled[t] = len(recalled)
    union = _union(predicted)
    for t in thresholds.coverage:
        tally.covered[t] = sum(
            sum(_overlap(g, u) for u in union) / (g[1] - g[0]) >= t for g in gold
        )
    tally.overlapped = sum(any(_overlap(p, g) > 0 for p in predicted) for g in gold)
    return tally


def _greedy_matches(pairs: Sequence[tuple[float, int, int]], threshold: float) -> int:
    """One-to-one matches taken from ``pairs`` (sorted best first) while IoU >= threshold."""
    used_pred: set[int] = set()
    used_gold: set[int] = set()
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_pred and j not in used_gold:
            used_pred.add(i)
            used_gold.add(j)
    return len(used_pred)


def _checked_thresholds(values: Sequence[float], name: str) -> tuple[float, ...]:
    checked = tuple(float(v) for v in values)
    for value in checked:
        # 0 would let pairs without a shared character match or count as contained.
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must lie in (0, 1], got {value}")
    return checked


def _checked_spans(spans: Sequence[Span], limit: int, row: int, kind: str) -> list[Span]:
    checked: list[Span] = []
    for span in spans:
        try:
            start, end = (operator.index(v) for v in span)
        except (TypeError, ValueError):
            raise ValueError(
                f"row {row}: {kind} span {span!r} is not a (start, end) pair of integers"
            ) from None
        if not 0 <= start < end <= limit:
            raise ValueError(
                f"row {row}: {kind} span {span!r} is not a non-empty range inside its "
                f"{limit}-character context (0 <= start < end <= {limit}); drop or fix it "
                "before scoring"
            )
        checked.append((start, end))
    return checked


def _union(spans: Sequence[Span]) -> list[Span]:
    """The characters covered by any of ``spans``, as disjoint sorted ranges."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(a: Span, b: Span) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def _iou(a: Span, b: Span) -> float:
    inter = _overlap(a, b)
    if inter == 0:
        return 0.0
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, _harmonic(precision, recall)


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


def _dedupe(ranking: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ranking))


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be a positive cut-off, got {k}")
