"""Metric functions against hand-computed cases, loaders, and the BM25 reference on TREC DL19."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crag_integrations.evaluation import (
    SpanExample,
    average_precision,
    bootstrap_interval,
    classification_metrics,
    dcg_at_k,
    evaluate_ranking,
    kendall_tau,
    load_scifact,
    load_trec_dl,
    load_wikiqa,
    load_xquad,
    ndcg_at_k,
    paired_bootstrap_interval,
    rank_by_scores,
    reciprocal_rank_at_k,
    resolve_data_dir,
    sentence_spans,
    span_metrics,
    span_word_counts,
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
    assert m.over_prediction_ratio == 2.0  # 2 predicted spans / 1 gold span


def test_span_iou_and_containment_thresholds() -> None:
    # gold "0123456789" (10 chars); prediction covers 4 of them: IoU 0.4
    row = SpanExample("0123456789 tail words", gold=[(0, 10)], predicted=[(0, 4)])
    m = span_metrics([row], iou_thresholds=(0.3, 0.5), containment_thresholds=(0.5, 1.0))
    assert m.span_f1 == {0.3: 1.0, 0.5: 0.0}
    # gold is only 40% covered, but the prediction lies fully inside it: precise, and the
    # gold span it lies in is recalled
    assert m.gold_coverage_recall == {0.5: 0.0, 1.0: 0.0}
    assert m.containment_f1 == {0.5: 1.0, 1.0: 1.0}
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


def test_span_words_are_runs_of_non_whitespace() -> None:
    """'results : good' is three words (':' one of them); 'F1-score' is one."""
    relevant = SpanExample("alpha", gold=[(0, 5)], predicted=[(0, 5)])
    irrelevant = SpanExample("results : good", gold=[], predicted=[(0, 14)])
    m = span_metrics([relevant, irrelevant])
    assert (m.word_precision, m.word_recall) == (1 / 4, 1.0)  # 1 TP, 3 FP words
    # gold "results :" and prediction ": good" share exactly the word ":"
    shared = span_metrics([SpanExample("results : good", gold=[(0, 9)], predicted=[(8, 14)])])
    assert (shared.word_precision, shared.word_recall) == (0.5, 0.5)
    # gold "F1" and prediction "score" both touch the single word "F1-score"
    hyphen = span_metrics([SpanExample("F1-score matters", gold=[(0, 2)], predicted=[(3, 8)])])
    assert (hyphen.word_precision, hyphen.word_recall, hyphen.word_f1) == (1.0, 1.0, 1.0)


def test_duplicate_predictions_are_scored_as_returned() -> None:
    row = SpanExample("Rain falls today.", gold=[(0, 10)], predicted=[(0, 10), (0, 10)])
    m = span_metrics([row])
    assert m.span_precision[0.5] == 0.5 and m.span_recall[0.5] == 1.0
    assert m.span_f1[0.5] == pytest.approx(2 / 3)
    assert m.num_predicted_spans == 2 and m.over_prediction_ratio == 2.0
    assert m.containment_precision[1.0] == 1.0  # each copy lies inside the gold span
    assert m.word_precision == 1.0  # words are counted once, whatever covers them


def test_containment_is_the_share_of_a_prediction_inside_one_gold_span() -> None:
    inside = SpanExample("x" * 100, gold=[(0, 100)], predicted=[(0, 10)])
    m = span_metrics([inside], containment_thresholds=(1.0,))
    assert (m.containment_precision[1.0], m.containment_recall[1.0]) == (1.0, 1.0)
    assert m.containment_f1[1.0] == 1.0
    assert m.gold_coverage_recall[1.0] == 0.0  # only 10% of the gold span is covered
    # the prediction straddles two gold spans: 10/20 in one, 9/20 in the other
    straddling = SpanExample("y" * 20, gold=[(0, 10), (11, 20)], predicted=[(0, 20)])
    m = span_metrics([straddling], containment_thresholds=(0.8,))
    assert (m.containment_precision[0.8], m.containment_recall[0.8]) == (0.0, 0.0)
    assert m.containment_f1[0.8] == 0.0
    assert m.gold_coverage_recall[0.8] == 1.0  # both gold spans are fully covered


def test_containment_recalls_every_gold_span_a_precise_prediction_lies_in() -> None:
    # half of the prediction in each gold span: at 0.5 it is precise for both
    row = SpanExample("z" * 20, gold=[(0, 10), (10, 20)], predicted=[(5, 15)])
    m = span_metrics([row], containment_thresholds=(0.5, 0.8))
    assert m.containment_precision == {0.5: 1.0, 0.8: 0.0}
    assert m.containment_recall == {0.5: 1.0, 0.8: 0.0}


def test_span_counts_are_summed_over_rows_with_irrelevant_rows_included() -> None:
    rows = [
        SpanExample("alpha beta", gold=[(0, 5)], predicted=[(0, 5)]),
        SpanExample("gamma delta", gold=[(0, 5), (6, 11)], predicted=[]),
        SpanExample("epsilon zeta", gold=[], predicted=[(0, 7)]),
    ]
    m = span_metrics(rows)
    # words: TP alpha; FN gamma, delta; FP epsilon
    assert (m.word_precision, m.word_recall) == (1 / 2, 1 / 3)
    assert m.word_f1 == pytest.approx(0.4)
    # spans: 1 match, 2 predictions, 3 gold spans (the mean of per-row F1s would be 1/3)
    assert (m.span_precision[0.5], m.span_recall[0.5]) == (1 / 2, 1 / 3)
    assert m.span_f1[0.5] == pytest.approx(0.4)
    assert m.over_prediction_ratio == pytest.approx(2 / 3)
    assert (m.num_rows, m.num_gold_spans, m.num_predicted_spans) == (3, 3, 2)
    # relevant rows only: the irrelevant row's false positive is gone
    rel = m.relevant_rows
    assert (rel.num_rows, rel.num_gold_spans, rel.num_predicted_spans) == (2, 3, 1)
    assert (rel.word_precision, rel.word_recall) == (1.0, 1 / 3)
    assert (rel.span_precision[0.5], rel.span_recall[0.5]) == (1.0, 1 / 3)
    assert rel.span_f1[0.5] == pytest.approx(0.5)
    assert rel.over_prediction_ratio == pytest.approx(1 / 3)
    flat = m.as_dict()
    assert flat["span_f1@0.5"] == m.span_f1[0.5]
    assert flat["relevant_rows.span_f1@0.5"] == rel.span_f1[0.5]
    assert flat["relevant_rows.num_rows"] == 2 and flat["span_precision@0.7"] == 0.5


def test_iou_matching_is_greedy_in_decreasing_iou_not_optimal() -> None:
    # A=(2,14) has IoU 8/14 with g1=(0,10) and 4/18 with g2=(10,20); B=(5,10) has 5/10 with g1.
    # Greedy takes A-g1 first, after which B-g1 and A-g2 are blocked: one match (the best
    # assignment, A-g2 and B-g1, would give two).
    row = SpanExample("w" * 20, gold=[(0, 10), (10, 20)], predicted=[(2, 14), (5, 10)])
    m = span_metrics([row], iou_thresholds=(0.2,))
    assert (m.span_precision[0.2], m.span_recall[0.2]) == (0.5, 0.5)


def test_iou_ties_go_to_the_later_prediction_as_in_the_harness() -> None:
    # P0=(6,18) and P1=(12,24) both have IoU 8/14 with G0=(10,20); only P0 also overlaps
    # G1=(0,9) (IoU 3/18). Taking the later prediction at the tie leaves P0 for G1.
    row = SpanExample("v" * 30, gold=[(10, 20), (0, 9)], predicted=[(6, 18), (12, 24)])
    m = span_metrics([row], iou_thresholds=(0.1, 0.5))
    assert m.span_f1 == {0.1: 1.0, 0.5: 0.5}


def test_gold_coverage_recall_uses_the_union_of_predictions() -> None:
    # overlapping predictions cover 8 of the 10 gold characters (not 6 + 6)
    row = SpanExample("u" * 10, gold=[(0, 10)], predicted=[(0, 6), (2, 8)])
    m = span_metrics([row], coverage_thresholds=(0.8, 1.0))
    assert m.gold_coverage_recall == {0.8: 1.0, 1.0: 0.0}
    # two predictions that each reach no IoU threshold together cover the gold span
    split = SpanExample("u" * 10, gold=[(0, 10)], predicted=[(0, 4), (4, 10)])
    m = span_metrics([split], iou_thresholds=(0.7,), coverage_thresholds=(1.0,))
    assert m.gold_coverage_recall == {1.0: 1.0} and m.span_f1 == {0.7: 0.0}
    # by default coverage uses the containment thresholds, as the harness does
    assert set(span_metrics([row]).gold_coverage_recall) == {0.5, 0.8, 1.0}


def test_recall_at_any_overlap_counts_gold_spans_some_prediction_touches() -> None:
    # (9, 12) shares character 9 with the first gold span; (10, 20) is only adjacent
    row = SpanExample("t" * 30, gold=[(0, 10), (20, 30)], predicted=[(9, 12), (10, 20)])
    m = span_metrics([row])
    assert m.recall_any_overlap == 0.5
    assert m.over_prediction_ratio == 1.0  # 2 spans / 2 spans, whatever their lengths


def test_over_prediction_ratio_counts_spans_not_characters() -> None:
    row = SpanExample("s" * 50, gold=[(0, 40), (40, 50)], predicted=[(0, 2), (3, 5), (6, 8)])
    assert span_metrics([row]).over_prediction_ratio == 1.5
    assert span_metrics([SpanExample("s", gold=[], predicted=[(0, 1)])]).over_prediction_ratio == 0


def test_span_metrics_reject_bad_spans_and_thresholds() -> None:
    with pytest.raises(ValueError, match=r"row 1: predicted span \(3, 9\)"):
        span_metrics(
            [
                SpanExample("abcdef", gold=[(0, 3)], predicted=[]),
                SpanExample("abcdef", gold=[(0, 3)], predicted=[(3, 9)]),
            ]
        )
    with pytest.raises(ValueError, match="gold span"):
        span_metrics([SpanExample("abcdef", gold=[(2, 2)], predicted=[])])
    with pytest.raises(ValueError, match="pair of integers"):
        span_metrics([SpanExample("abcdef", gold=[(0.0, 2.5)], predicted=[])])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"iou_thresholds must lie in \(0, 1\]"):
        span_metrics([], iou_thresholds=(0.0,))


def test_span_metrics_of_no_rows_are_zero() -> None:
    m = span_metrics([])
    assert m.num_rows == 0 and m.word_f1 == 0.0 and m.relevant_rows.span_f1[0.3] == 0.0


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


def test_kendall_tau_counts_concordant_and_discordant_pairs() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 3 items, pairs (1,2) concordant, (1,3) concordant, (2,3) discordant: (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [10, 30, 20]) == pytest.approx(1 / 3)


def test_kendall_tau_corrects_for_ties_like_tau_b() -> None:
    # x ties items 0 and 1; y ties none. C = 4, D = 1, ties only in x = 1:
    # (4 - 1) / sqrt((4 + 1 + 1) * (4 + 1 + 0)).
    x, y = [1, 1, 2, 3], [1, 2, 4, 3]
    assert kendall_tau(x, y) == pytest.approx(3 / math.sqrt(6 * 5))
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for _ in range(20):
        a = [rng.choice([0.0, 0.5, 1.0, 2.0]) for _ in range(12)]
        b = [rng.choice([0.0, 1.0, 3.0]) + rng.random() * (i % 2) for i in range(12)]
        expected = scipy_stats.kendalltau(a, b).statistic
        assert kendall_tau(a, b) == pytest.approx(expected, nan_ok=True)


_SCORES = st.lists(
    st.tuples(
        st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, 1.0]),
        st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, 1.0]),
    ),
    min_size=2,
    max_size=25,
)


@given(_SCORES)
def test_kendall_tau_is_symmetric_bounded_and_rank_only(pairs: list[tuple[float, float]]) -> None:
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    tau = kendall_tau(x, y)
    if math.isnan(tau):
        assert len(set(x)) == 1 or len(set(y)) == 1
        return
    assert -1 - 1e-12 <= tau <= 1 + 1e-12
    assert kendall_tau(y, x) == pytest.approx(tau)
    assert kendall_tau(x, [-v for v in y]) == pytest.approx(-tau)
    # Only the order counts: replacing each score by its rank among the distinct scores
    # (a strictly increasing map) changes nothing.
    rank = {v: i for i, v in enumerate(sorted(set(x)))}
    assert kendall_tau([rank[v] for v in x], y) == pytest.approx(tau)
    if len(set(x)) > 1:
        assert kendall_tau(x, x) == 1.0


def test_kendall_tau_is_nan_when_a_list_orders_nothing_and_refuses_bad_input() -> None:
    assert math.isnan(kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least two"):
        kendall_tau([1.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        kendall_tau([1.0, math.nan], [1.0, 2.0])


def test_paired_bootstrap_interval_brackets_the_mean_and_is_reproducible() -> None:
    assert paired_bootstrap_interval([0.25] * 7) == (0.25, 0.25)
    diffs = [0.1, -0.05, 0.02, 0.0, 0.3, -0.2, 0.07, 0.01, -0.01, 0.04]
    low, high = paired_bootstrap_interval(diffs, resamples=2000, seed=5)
    mean = sum(diffs) / len(diffs)
    assert low < mean < high
    assert (low, high) == paired_bootstrap_interval(diffs, resamples=2000, seed=5)
    narrow = paired_bootstrap_interval(diffs, confidence=0.5, resamples=2000, seed=5)
    assert low <= narrow[0] <= narrow[1] <= high
    # A difference every item shows is outside the noise band: the interval excludes 0.
    assert paired_bootstrap_interval([0.01 + 0.001 * i for i in range(30)])[0] > 0


def test_bootstrap_interval_of_the_mean_is_the_paired_interval() -> None:
    diffs = [0.1, -0.05, 0.02, 0.0, 0.3, -0.2, 0.07]
    mean = bootstrap_interval(len(diffs), lambda at: sum(diffs[i] for i in at) / len(diffs))
    assert mean == paired_bootstrap_interval(diffs)
    # Any statistic: the share of positive items, over resampled positions.
    low, high = bootstrap_interval(
        len(diffs), lambda at: sum(diffs[i] > 0 for i in at) / len(at), resamples=500, seed=2
    )
    assert 0 <= low <= 4 / 7 <= high <= 1
    with pytest.raises(ValueError, match="at least one item"):
        bootstrap_interval(0, lambda at: 0.0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(3, lambda at: 0.0, confidence=0.0)


def test_span_word_counts_are_what_span_metrics_sums() -> None:
    rows = [
        SpanExample("the cat sat on the mat", [(4, 11)], [(4, 7), (15, 22)]),
        SpanExample("nothing relevant here", [], [(0, 7)]),
        SpanExample("gold only", [(0, 9)], []),
    ]
    counts = [span_word_counts(r.context, r.gold, r.predicted) for r in rows]
    assert counts == [(1, 2, 1), (0, 1, 0), (0, 0, 2)]  # cat | the, mat | sat
    tp, fp, fn = (sum(c[k] for c in counts) for k in range(3))
    result = span_metrics(rows)
    assert result.word_precision == pytest.approx(tp / (tp + fp))
    assert result.word_recall == pytest.approx(tp / (tp + fn))


def test_paired_bootstrap_interval_refuses_what_it_cannot_resample() -> None:
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_interval([])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap_interval([0.1, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_interval([0.1], confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_interval([0.1], resamples=0)


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
    assert out == ["none", "29", "True"]


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
