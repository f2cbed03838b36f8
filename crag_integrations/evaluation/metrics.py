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

Span metrics follow the all-row protocol of the acl-verbatim highlighter card: every row
counts, including rows whose gold span list is empty, so text highlighted on an irrelevant row
is a false positive.

Example:
    >>> qrels = {"q1": {"d1": 3, "d2": 0, "d3": 1}}
    >>> result = evaluate_ranking({"q1": ["d3", "d1", "d9"]}, qrels, k=10)
    >>> round(result.ndcg, 4), result.mrr, result.num_queries
    (0.7967, 1.0, 1)
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from crag_integrations.evaluation.datasets import RankingQuery

__all__ = [
    "ClassificationMetrics",
    "RankingMetrics",
    "SpanExample",
    "SpanMetrics",
    "average_precision",
    "classification_metrics",
    "dcg_at_k",
    "evaluate_ranking",
    "ndcg_at_k",
    "rank_by_scores",
    "rank_candidates",
    "reciprocal_rank_at_k",
    "span_metrics",
]

#: A half-open ``(start, end)`` character range.
Span = tuple[int, int]

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

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class SpanExample:
    """One scored row: a context with its gold and predicted evidence character spans.

    Spans are half-open ``(start, end)`` character offsets into ``context``. An empty ``gold``
    marks an irrelevant row.
    """

    context: str
    gold: Sequence[Span]
    predicted: Sequence[Span]


@dataclass(frozen=True)
class SpanMetrics:
    """Span-extraction quality over all rows (irrelevant rows included).

    Attributes:
        word_precision: Micro precision over the context's words (``\\w+`` tokens); a word is
            predicted/gold when any of its characters lies in a predicted/gold span.
        word_recall: Micro word recall.
        word_f1: Micro word F1.
        span_f1: IoU threshold -> span F1 with one-to-one matching of predicted to gold spans
            whose character IoU reaches the threshold (greedy, highest IoU first).
        containment_f1: Threshold ``c`` -> F1 of containment precision (share of predicted
            spans with at least ``c`` of their characters inside gold spans) and containment
            recall (share of gold spans with at least ``c`` of their characters predicted).
        gold_coverage_recall: Threshold ``c`` -> containment recall.
        recall_any_overlap: Share of gold spans touched by any predicted character.
        over_prediction_ratio: Predicted characters divided by gold characters.
        num_rows: Rows scored.
        num_gold_spans: Gold spans over all rows.
        num_predicted_spans: Predicted spans over all rows.
    """

    word_precision: float
    word_recall: float
    word_f1: float
    span_f1: Mapping[float, float]
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
        flat.update({f"span_f1@{t:g}": v for t, v in self.span_f1.items()})
        flat.update({f"containment_f1@{t:g}": v for t, v in self.containment_f1.items()})
        flat.update(
            {f"gold_coverage_recall@{t:g}": v for t, v in self.gold_coverage_recall.items()}
        )
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


def span_metrics(
    examples: Iterable[SpanExample],
    *,
    iou_thresholds: Sequence[float] = (0.3, 0.5),
    containment_thresholds: Sequence[float] = (0.5, 0.8, 1.0),
) -> SpanMetrics:
    """Score predicted evidence spans against gold spans over all rows.

    Args:
        examples: Rows to score; rows without gold spans are irrelevant rows, and anything
            predicted on them counts as a false positive.
        iou_thresholds: IoU thresholds for span F1.
        containment_thresholds: Coverage thresholds for containment F1.

    Returns:
        The metrics; undefined ratios (0/0) are 0.

    Example:
        >>> row = SpanExample("Rain falls. Sun shines.", gold=[(0, 11)], predicted=[(0, 4)])
        >>> m = span_metrics([row])
        >>> m.word_precision, m.word_recall, m.span_f1[0.3], m.span_f1[0.5]
        (1.0, 0.5, 1.0, 0.0)
    """
    word_tp = word_fp = word_fn = 0
    matched = dict.fromkeys(iou_thresholds, 0)
    pred_contained = dict.fromkeys(containment_thresholds, 0)
    gold_covered = dict.fromkeys(containment_thresholds, 0)
    gold_touched = 0
    n_rows = n_gold = n_pred = 0
    gold_chars = pred_chars = 0
    for example in examples:
        n_rows += 1
        gold = _merge(example.gold, len(example.context))
        pred = _merge(example.predicted, len(example.context))
        n_gold += len(gold)
        n_pred += len(pred)
        gold_chars += sum(e - s for s, e in gold)
        pred_chars += sum(e - s for s, e in pred)
        for match in _WORD.finditer(example.context):
            word = (match.start(), match.end())
            in_gold = any(_overlap(word, g) > 0 for g in gold)
            in_pred = any(_overlap(word, p) > 0 for p in pred)
            word_tp += in_gold and in_pred
            word_fp += in_pred and not in_gold
            word_fn += in_gold and not in_pred
        for threshold in iou_thresholds:
            matched[threshold] += _match_by_iou(pred, gold, threshold)
        for threshold in containment_thresholds:
            pred_contained[threshold] += sum(
                _covered_fraction(p, gold) >= threshold - 1e-12 for p in pred
            )
            gold_covered[threshold] += sum(
                _covered_fraction(g, pred) >= threshold - 1e-12 for g in gold
            )
        gold_touched += sum(_covered_fraction(g, pred) > 0 for g in gold)
    word_p, word_r, word_f = _prf(word_tp, word_fp, word_fn)
    span_f1 = {t: _f1_from_counts(matched[t], n_pred, n_gold) for t in iou_thresholds}
    containment_f1 = {}
    coverage = {}
    for t in containment_thresholds:
        precision = pred_contained[t] / n_pred if n_pred else 0.0
        recall = gold_covered[t] / n_gold if n_gold else 0.0
        containment_f1[t] = _harmonic(precision, recall)
        coverage[t] = recall
    return SpanMetrics(
        word_precision=word_p,
        word_recall=word_r,
        word_f1=word_f,
        span_f1=span_f1,
        containment_f1=containment_f1,
        gold_coverage_recall=coverage,
        recall_any_overlap=gold_touched / n_gold if n_gold else 0.0,
        over_prediction_ratio=pred_chars / gold_chars if gold_chars else 0.0,
        num_rows=n_rows,
        num_gold_spans=n_gold,
        num_predicted_spans=n_pred,
    )


def _merge(spans: Sequence[Span], limit: int) -> list[Span]:
    clipped = sorted((max(0, s), min(limit, e)) for s, e in spans if min(limit, e) > max(0, s))
    merged: list[Span] = []
    for start, end in clipped:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(a: Span, b: Span) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def _covered_fraction(span: Span, others: Sequence[Span]) -> float:
    length = span[1] - span[0]
    if length <= 0:
        return 0.0
    return sum(_overlap(span, o) for o in others) / length


def _match_by_iou(pred: Sequence[Span], gold: Sequence[Span], threshold: float) -> int:
    candidates = []
    for i, p in enumerate(pred):
        for j, g in enumerate(gold):
            inter = _overlap(p, g)
            union = (p[1] - p[0]) + (g[1] - g[0]) - inter
            iou = inter / union if union else 0.0
            if inter > 0 and iou >= threshold - 1e-12:
                candidates.append((iou, i, j))
    used_pred: set[int] = set()
    used_gold: set[int] = set()
    for _, i, j in sorted(candidates, reverse=True):
        if i not in used_pred and j not in used_gold:
            used_pred.add(i)
            used_gold.add(j)
    return len(used_pred)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, _harmonic(precision, recall)


def _f1_from_counts(matches: int, n_pred: int, n_gold: int) -> float:
    precision = matches / n_pred if n_pred else 0.0
    recall = matches / n_gold if n_gold else 0.0
    return _harmonic(precision, recall)


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


def _dedupe(ranking: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ranking))


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be a positive cut-off, got {k}")
