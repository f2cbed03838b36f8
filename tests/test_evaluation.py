"""Metric functions against hand-computed cases, loaders, and the BM25 reference on TREC DL19."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crag_integrations.evaluation import (
    SpanExample,
    average_precision,
    classification_metrics,
    dcg_at_k,
    evaluate_ranking,
    load_scifact,
    load_trec_dl,
    load_wikiqa,
    load_xquad,
    ndcg_at_k,
    rank_by_scores,
    reciprocal_rank_at_k,
    resolve_data_dir,
    sentence_spans,
    span_metrics,
)
from crag_integrations.scoring import sentence_ranges

DATA_DIR = Path(
    os.environ.get("CRAG_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "trec-dl19" / "qrels.txt").is_file(),
    reason=f"shared evaluation data not found at {DATA_DIR} (set CRAG_DATA_DIR)",
)


def test_ndcg_uses_linear_gain_and_ideal_from_all_judged_docs() -> None:
    # d4 (grade 2) is judged but not retrieved: it still shapes the ideal ranking.
    judgments = {"d1": 3, "d2": 0, "d3": 1, "d4": 2}
    ranking = ["d3", "dX", "d1"]
    dcg = 1 / math.log2(2) + 3 / math.log2(4)
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranking, judgments, k=10) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(ranking, judgments, k=1) == pytest.approx(1 / 3)


def test_ndcg_is_one_for_ideal_order_and_zero_without_relevant_judgments() -> None:
    assert ndcg_at_k(["a", "b", "c"], {"a": 2, "b": 1, "c": 0}, k=3) == pytest.approx(1.0)
    assert ndcg_at_k(["a"], {"a": 0}, k=10) == 0.0
    assert dcg_at_k([0, 0, 3], 2) == 0.0


def test_duplicates_in_a_run_count_once() -> None:
    assert ndcg_at_k(["a", "a", "b"], {"b": 1}, k=2) == pytest.approx(1 / math.log2(3))


def test_mrr_respects_cutoff_and_relevance_threshold() -> None:
    judgments = {"a": 1, "b": 2}
    assert reciprocal_rank_at_k(["x", "a", "b"], judgments, k=10) == 0.5
    assert reciprocal_rank_at_k(["x", "a", "b"], judgments, k=10, relevance_threshold=2) == (
        pytest.approx(1 / 3)
    )
    assert reciprocal_rank_at_k(["x", "a", "b"], judgments, k=1) == 0.0


def test_average_precision_divides_by_all_relevant_judged_docs() -> None:
    judgments = {"a": 1, "b": 1, "c": 1, "n": 0}
    # hits at ranks 1 and 3; "c" never retrieved
    assert average_precision(["a", "n", "b"], judgments) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision(["n"], {"n": 0}) == 0.0


def test_evaluate_ranking_averages_only_judged_queries() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 2}}
    result = evaluate_ranking({"q1": ["a"], "q2": ["x", "b"], "q3": ["z"]}, qrels, k=10)
    assert result.num_queries == 2
    assert result.ndcg == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert result.mrr == pytest.approx(0.75)
    assert result.as_dict()["ndcg@10"] == result.ndcg
    with pytest.raises(ValueError, match="judgments"):
        evaluate_ranking({"q9": ["a"]}, qrels)


def test_rank_by_scores_sorts_descending_and_keeps_ties_in_input_order() -> None:
    assert rank_by_scores(["a", "b", "c", "d"], [0.1, 0.5, 0.1, 0.9]) == ["d", "b", "a", "c"]
    with pytest.raises(ValueError, match="scores"):
        rank_by_scores(["a"], [])


def test_binary_classification_metrics_match_hand_counts() -> None:
    # tp=2 fp=1 fn=1 tn=2
    m = classification_metrics([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0])
    assert m.average == "binary"
    assert (m.accuracy, m.precision, m.recall) == pytest.approx((4 / 6, 2 / 3, 2 / 3))
    assert m.f1 == pytest.approx(2 / 3)
    assert m.mcc == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))


def test_multiclass_metrics_are_macro_averaged() -> None:
    y_true = ["a", "a", "b", "c"]
    y_pred = ["a", "b", "b", "c"]
    m = classification_metrics(y_true, y_pred)
    assert m.average == "macro"
    # per class (p, r): a (1, .5), b (.5, 1), c (1, 1)
    assert m.precision == pytest.approx((1 + 0.5 + 1) / 3)
    assert m.recall == pytest.approx((0.5 + 1 + 1) / 3)
    assert m.f1 == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # Gorodkin: (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    expected = (3 * 4 - (1 * 2 + 2 * 1 + 1 * 1)) / math.sqrt((16 - 6) * (16 - 6))
    assert m.mcc == pytest.approx(expected)


def test_classification_degenerate_cases_do_not_divide_by_zero() -> None:
    m = classification_metrics([0, 0], [0, 0], labels=[0, 1])
    assert (m.accuracy, m.precision, m.recall, m.f1, m.mcc) == (1.0, 0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="gold labels"):
        classification_metrics([1], [1, 0])


def test_span_metrics_count_predictions_on_irrelevant_rows_as_false_positives() -> None:
    relevant = SpanExample("alpha beta gamma delta", gold=[(0, 10)], predicted=[(0, 10)])
    irrelevant = SpanExample("epsilon zeta", gold=[], predicted=[(0, 7)])
    m = span_metrics([relevant, irrelevant])
    assert m.word_precision == pytest.approx(2 / 3)
    assert m.word_recall == 1.0
    assert m.span_f1[0.5] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert m.num_rows == 2 and m.num_gold_spans == 1 and m.num_predicted_spans == 2
    assert m.over_prediction_ratio == pytest.approx(17 / 10)


def test_span_iou_and_containment_thresholds() -> None:
    # gold "0123456789" (10 chars); prediction covers 4 of them: IoU 0.4
    row = SpanExample("0123456789 tail words", gold=[(0, 10)], predicted=[(0, 4)])
    m = span_metrics([row], iou_thresholds=(0.3, 0.5), containment_thresholds=(0.5, 1.0))
    assert m.span_f1 == {0.3: 1.0, 0.5: 0.0}
    # the prediction lies fully inside gold (precision 1), gold is 40% covered (recall 0)
    assert m.gold_coverage_recall == {0.5: 0.0, 1.0: 0.0}
    assert m.containment_f1 == {0.5: 0.0, 1.0: 0.0}
    assert m.recall_any_overlap == 1.0
    wide = SpanExample("0123456789 tail words", gold=[(0, 10)], predicted=[(0, 15)])
    mw = span_metrics([wide], containment_thresholds=(0.5, 1.0))
    # prediction is 10/15 inside gold; gold fully covered
    assert mw.gold_coverage_recall == {0.5: 1.0, 1.0: 1.0}
    assert mw.containment_f1 == {0.5: 1.0, 1.0: 0.0}


def test_span_matching_is_one_to_one() -> None:
    row = SpanExample("aaaa bbbb cccc", gold=[(0, 14)], predicted=[(0, 9), (10, 14)])
    m = span_metrics([row], iou_thresholds=(0.2,))
    assert m.span_f1[0.2] == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_sentence_spans_split_on_sentence_ends() -> None:
    text = "Rain falls. It is wet!  Why? Because 3 clouds."
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "Rain falls.",
        "It is wet!",
        "Why?",
        "Because 3 clouds.",
    ]


def test_sentence_spans_are_the_highlighters_sentences() -> None:
    """One splitter: evaluation's sentences are scoring.sentence_ranges (CJK, blank lines too)."""
    text = "First one. Second one!\n\nThird 東京です。四番目？ Last\n\nNo stop here\n\n"
    assert sentence_spans(text) == sentence_ranges(text)
    assert [text[s:e] for s, e in sentence_spans(text)][-2:] == ["Last", "No stop here"]


def test_evaluation_imports_no_torch_and_keeps_its_public_names() -> None:
    """The metrics and loaders stay importable without torch, under their old names."""
    code = (
        "import sys, crag_integrations.evaluation as e;"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers')"
        " if m in sys.modules];"
        "print(','.join(heavy) or 'none', len(e.__all__), callable(e.read_qrels))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["none", "24", "True"]


def test_resolve_data_dir_explains_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAG_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="CRAG_DATA_DIR"):
        resolve_data_dir()


@needs_data
def test_bm25_order_on_trec_dl19_gives_the_published_ndcg() -> None:
    queries, qrels = load_trec_dl(DATA_DIR, split="trec-dl19")
    assert len(queries) == 43
    result = evaluate_ranking({q.qid: list(q.doc_ids) for q in queries}, qrels, k=10)
    assert round(result.ndcg, 4) == 0.5058


@needs_data
def test_loaders_read_the_shared_formats() -> None:
    xquad = load_xquad(DATA_DIR)
    assert len(xquad) == 1190
    first = xquad[0]
    start, end = first.answers[0]
    assert first.context[start:end] == "308"
    wikiqa = load_wikiqa(DATA_DIR)
    assert len(wikiqa) == 6165 and {r.label for r in wikiqa} == {0, 1}
    corpus, claims = load_scifact(DATA_DIR)
    assert len(corpus) == 5183 and len(claims["train"]) == 809
    with_evidence = next(c for c in claims["train"] if c.evidence)
    doc_id, sentence_ids = next(iter(with_evidence.evidence.items()))
    assert all(i < len(corpus[doc_id].sentences) for i in sentence_ids)
