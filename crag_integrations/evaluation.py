"""Offline evaluation: ranking, classification and evidence-span metrics, and data loaders.

Everything here is pure Python over plain lists and mappings (no torch, no numpy), so the
metrics can be checked against hand-computed cases and reused on any model's output.

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

import ast
import csv
import io
import json
import math
import os
import re
import zipfile
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DATA_DIR_ENV",
    "ClassificationMetrics",
    "RankingMetrics",
    "RankingQuery",
    "SciFactAbstract",
    "SciFactClaim",
    "SpanExample",
    "SpanMetrics",
    "WikiQARow",
    "XQuADQuestion",
    "average_precision",
    "classification_metrics",
    "dcg_at_k",
    "evaluate_ranking",
    "load_scifact",
    "load_trec_dl",
    "load_wikiqa",
    "load_xquad",
    "ndcg_at_k",
    "rank_by_scores",
    "reciprocal_rank_at_k",
    "resolve_data_dir",
    "sentence_spans",
    "span_metrics",
]

#: Environment variable naming the folder that holds the shared evaluation data.
DATA_DIR_ENV = "CRAG_DATA_DIR"

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


def sentence_spans(text: str) -> list[Span]:
    """Split ``text`` into sentence character spans (a simple ``.``/``!``/``?`` splitter).

    Used to turn an answer offset into its answer sentence for highlighter training data.

    Args:
        text: The context.

    Returns:
        Half-open spans covering each sentence without surrounding whitespace.
    """
    spans: list[Span] = []
    for match in re.finditer(r"\S.*?(?:[.!?](?=\s+[A-Z0-9\"'(\[])|$)", text, flags=re.DOTALL):
        start, end = match.start(), match.end()
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
    return spans


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


# --------------------------------------------------------------------------------------
# Loaders for the shared data formats
# --------------------------------------------------------------------------------------


def resolve_data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The evaluation-data folder: ``path`` if given, else ``$CRAG_DATA_DIR``.

    Args:
        path: Explicit folder.

    Returns:
        The folder as a ``Path``.

    Raises:
        FileNotFoundError: If neither is given or the folder does not exist.
    """
    chosen = path if path is not None else os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise FileNotFoundError(
            f"no data folder given: pass a path or set {DATA_DIR_ENV} (e.g. ../shared/data)"
        )
    folder = Path(chosen)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    return folder


def _resolve_file(path: str | os.PathLike[str] | None, default_relative: str) -> Path:
    if path is not None and Path(path).is_file():
        return Path(path)
    folder = resolve_data_dir(path)
    candidate = folder / default_relative
    if candidate.is_file():
        return candidate
    nested = folder / Path(default_relative).name
    if nested.is_file():
        return nested
    raise FileNotFoundError(f"{candidate} not found")


@dataclass(frozen=True)
class RankingQuery:
    """A query with its candidate passages, in first-stage (e.g. BM25) order.

    Attributes:
        qid: Query id as in the qrels.
        query: Query text.
        doc_ids: Candidate document ids, first-stage order.
        texts: Candidate texts, parallel to ``doc_ids``.
    """

    qid: str
    query: str
    doc_ids: tuple[str, ...]
    texts: tuple[str, ...]


def load_trec_dl(
    path: str | os.PathLike[str] | None = None, *, split: str = "trec-dl19"
) -> tuple[list[RankingQuery], dict[str, dict[str, int]]]:
    """Load a TREC DL folder (``bm25_top100.json`` + ``qrels.txt``).

    Args:
        path: The split's folder, or the data folder holding ``split``; defaults to
            ``$CRAG_DATA_DIR/<split>``.
        split: Sub-folder name used when ``path`` is the data folder.

    Returns:
        The queries with their candidates in BM25 order, and the qrels
        (query id -> doc id -> grade).
    """
    folder = resolve_data_dir(path)
    if not (folder / "bm25_top100.json").is_file():
        folder = folder / split
    with (folder / "bm25_top100.json").open(encoding="utf-8") as handle:
        raw = json.load(handle)
    queries = []
    for entry in raw:
        hits = sorted(entry["hits"], key=lambda h: int(h["rank"]))
        if not hits:
            continue
        queries.append(
            RankingQuery(
                qid=str(hits[0]["qid"]),
                query=str(entry["query"]),
                doc_ids=tuple(str(h["docid"]) for h in hits),
                texts=tuple(str(h["content"]) for h in hits),
            )
        )
    return queries, read_qrels(folder / "qrels.txt")


def read_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Read a TREC qrels file (``qid iteration docid grade`` per line).

    Args:
        path: The file.

    Returns:
        Query id -> doc id -> grade.
    """
    qrels: dict[str, dict[str, int]] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) < 4:
                continue
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


@dataclass(frozen=True)
class XQuADQuestion:
    """A SQuAD-format question with its paragraph and answer character spans.

    Attributes:
        qid: Question id.
        question: Question text.
        context: The paragraph that answers it.
        answers: Answer ``(start, end)`` spans in ``context``.
        title: Article title (paragraphs of one article are natural hard negatives).
        paragraph_index: Index of the paragraph within the article.
    """

    qid: str
    question: str
    context: str
    answers: tuple[Span, ...]
    title: str
    paragraph_index: int


def load_xquad(path: str | os.PathLike[str] | None = None) -> list[XQuADQuestion]:
    """Load ``xquad.en.json`` (SQuAD v1.1 format).

    Args:
        path: The json file, or a data folder holding ``xquad/xquad.en.json``.

    Returns:
        One entry per question.
    """
    file = _resolve_file(path, "xquad/xquad.en.json")
    with file.open(encoding="utf-8") as handle:
        raw = json.load(handle)
    questions = []
    for article in raw["data"]:
        for p_index, paragraph in enumerate(article["paragraphs"]):
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                spans = tuple(
                    (int(a["answer_start"]), int(a["answer_start"]) + len(a["text"]))
                    for a in qa["answers"]
                )
                questions.append(
                    XQuADQuestion(
                        qid=str(qa["id"]),
                        question=str(qa["question"]),
                        context=context,
                        answers=spans,
                        title=str(article["title"]),
                        paragraph_index=p_index,
                    )
                )
    return questions


@dataclass(frozen=True)
class WikiQARow:
    """One WikiQA question-sentence pair.

    Attributes:
        question_id: Question id (rows of one question share it).
        question: Question text.
        sentence: Candidate answer sentence.
        label: 1 if the sentence answers the question, else 0.
    """

    question_id: str
    question: str
    sentence: str
    label: int


def load_wikiqa(path: str | os.PathLike[str] | None = None) -> list[WikiQARow]:
    """Load ``WikiQA-test.tsv``.

    Args:
        path: The tsv file, or a data folder holding ``wikiqa/WikiQA-test.tsv``.

    Returns:
        The rows in file order.
    """
    file = _resolve_file(path, "wikiqa/WikiQA-test.tsv")
    with file.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [
            WikiQARow(
                question_id=row["QuestionID"],
                question=row["Question"],
                sentence=row["Sentence"],
                label=int(row["Label"]),
            )
            for row in reader
        ]


@dataclass(frozen=True)
class SciFactAbstract:
    """A SciFact corpus abstract.

    Attributes:
        doc_id: Document id.
        title: Title.
        sentences: Abstract sentences (rationale indices point into them).
    """

    doc_id: str
    title: str
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class SciFactClaim:
    """A SciFact claim with its evidence.

    Attributes:
        claim_id: Claim id.
        claim: Claim text.
        evidence: Doc id -> rationale sentence indices (empty for claims without evidence).
        cited_doc_ids: Documents the claim cites (evidence or not).
    """

    claim_id: str
    claim: str
    evidence: Mapping[str, tuple[int, ...]]
    cited_doc_ids: tuple[str, ...]


# The CSVs store numpy array reprs ("['a' 'b']", "[1 2]"), which are not Python literals.
_INT = re.compile(r"-?\d+")
_PY_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", flags=re.DOTALL)


def load_scifact(
    path: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, SciFactAbstract], dict[str, list[SciFactClaim]]]:
    """Load the SciFact CSVs from ``scifact.zip``.

    Args:
        path: The zip file, or a data folder holding ``scifact/scifact.zip``.

    Returns:
        The corpus (doc id -> abstract) and the claims per split (``"train"``,
        ``"validation"``, ``"test"``), with the per-document rows of a claim merged.
    """
    file = _resolve_file(path, "scifact/scifact.zip")
    with zipfile.ZipFile(file) as archive:
        corpus = {}
        for row in _zip_csv(archive, "corpus_train.csv"):
            sentences = tuple(ast.literal_eval(s) for s in _PY_STRING.findall(row["abstract"]))
            corpus[row["doc_id"]] = SciFactAbstract(row["doc_id"], row["title"], sentences)
        splits: dict[str, list[SciFactClaim]] = {}
        for split in ("train", "validation", "test"):
            name = f"claims_{split}.csv"
            if name not in archive.namelist():
                continue
            merged: dict[str, tuple[str, dict[str, tuple[int, ...]], tuple[str, ...]]] = {}
            for row in _zip_csv(archive, name):
                claim = merged.setdefault(
                    row["id"],
                    (row["claim"], {}, tuple(_INT.findall(row["cited_doc_ids"]))),
                )
                indices = {int(i) for i in _INT.findall(row["evidence_sentences"])}
                if row["evidence_doc_id"]:
                    previous = claim[1].get(row["evidence_doc_id"], ())
                    claim[1][row["evidence_doc_id"]] = tuple(sorted({*previous, *indices}))
            splits[split] = [
                SciFactClaim(cid, text, evidence, cited)
                for cid, (text, evidence, cited) in merged.items()
            ]
    return corpus, splits


def _zip_csv(archive: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    with archive.open(name) as raw:
        return list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))
