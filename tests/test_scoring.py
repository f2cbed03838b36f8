"""Pure decision functions: exact cases and properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crag_integrations import IncompatibleModelError, Span
from crag_integrations.scoring import (
    OSMOSIS_LABELS,
    best_window,
    evidence_label_mask,
    extract_spans,
    join_spans,
    relevance_probability,
    relevant_label_mask,
    select_top,
    sentence_ranges,
    sentence_scores,
    sigmoid,
    softmax,
)


def test_sigmoid_and_softmax_are_stable_at_extremes() -> None:
    """No overflow for huge logits; values match the textbook formulas."""
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
    assert sigmoid(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert softmax([1000.0, 1000.0]) == [0.5, 0.5]
    assert sum(softmax([3.0, -2.0, 0.5])) == pytest.approx(1.0)


def test_select_top_sorts_thresholds_then_cuts() -> None:
    """Threshold is applied before the cut; ties keep input order."""
    scores = [0.2, 0.9, 0.5, 0.9, -1.0]
    assert select_top(scores) == [1, 3, 2, 0, 4]
    assert select_top(scores, top_n=2) == [1, 3]
    assert select_top(scores, min_score=0.3) == [1, 3, 2]
    assert select_top(scores, min_score=0.6, top_n=5) == [1, 3]
    assert select_top(scores, top_n=0) == []
    with pytest.raises(ValueError, match="top_n"):
        select_top(scores, top_n=-1)


@given(st.lists(st.floats(-50, 50), max_size=30), st.none() | st.integers(0, 40))
def test_select_top_properties(scores: list[float], top_n: int | None) -> None:
    """Result is a sorted, duplicate-free subset of at most top_n indices."""
    chosen = select_top(scores, top_n=top_n)
    assert len(set(chosen)) == len(chosen)
    assert [scores[i] for i in chosen] == sorted((scores[i] for i in chosen), reverse=True)
    assert len(chosen) == (len(scores) if top_n is None else min(top_n, len(scores)))


def test_binary_positive_label_is_read_from_names_else_index_one() -> None:
    """Named positives win; a named negative points at the other; default index 1."""
    assert relevant_label_mask(["relevant", "not_relevant"]) == (True, False)
    assert relevant_label_mask(["Irrelevant", "something"]) == (False, True)
    assert relevant_label_mask(["YES", "NO"]) == (True, False)
    assert relevant_label_mask(["LABEL_0", "LABEL_1"]) == (False, True)
    assert relevant_label_mask(["a", "b"], ["a"]) == (True, False)


def test_osmosis_labels_map_to_addressed_as_relevant() -> None:
    """ADDR_DIRECT and ADDR_PARTIAL are relevant; the NOADDR_* labels are not."""
    assert relevant_label_mask(OSMOSIS_LABELS) == (True, True, False, False, False)


def test_unknown_multiclass_labels_need_an_explicit_mapping() -> None:
    """Three unknown labels cannot be guessed; the error says what to pass."""
    with pytest.raises(IncompatibleModelError, match="relevant_labels"):
        relevant_label_mask(["x", "y", "z"])
    with pytest.raises(ValueError, match="subset"):
        relevant_label_mask(["x", "y", "z"], ["w"])
    assert relevant_label_mask(["x", "y", "z"], ["x", "z"]) == (True, False, True)


def test_relevance_probability_by_head_shape() -> None:
    """One logit: sigmoid. Several: softmax mass on the relevant labels."""
    assert relevance_probability([0.0], None) == 0.5
    assert relevance_probability([0.0, 0.0, 0.0], (True, False, True)) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="mask"):
        relevance_probability([0.0, 1.0], None)


def test_best_window_is_the_most_relevant_window() -> None:
    """Max logit for rerankers; max relevance probability for classifiers."""
    assert best_window([(0.1,), (2.0,), (-3.0,)]) == 1
    assert best_window([(2.0, 0.0), (0.0, 2.0)], (False, True)) == 1
    with pytest.raises(ValueError, match="no windows"):
        best_window([])


def test_evidence_labels() -> None:
    """Evidence is everything but the 'outside' label; index 1 for unnamed binary heads."""
    assert evidence_label_mask(["O", "EVIDENCE"]) == (False, True)
    assert evidence_label_mask(["EVIDENCE", "O"]) == (True, False)
    assert evidence_label_mask(["LABEL_0", "LABEL_1"]) == (False, True)
    assert evidence_label_mask(["O", "B-EV", "I-EV"]) == (False, True, True)
    assert evidence_label_mask(["A", "B", "C"], ["B"]) == (False, True, False)
    with pytest.raises(IncompatibleModelError, match="evidence_labels"):
        evidence_label_mask(["A", "B", "C"])


TEXT = "Alpha beta gamma. Delta epsilon zeta. Eta theta iota."
#        0     6    11    18    24      32    38  42    48
WORDS = [(0, 5), (6, 10), (11, 16), (16, 17), (18, 23), (24, 31), (32, 36), (36, 37)]


def test_spans_from_consecutive_evidence_tokens() -> None:
    """Consecutive tokens at or above threshold form one span scored by their mean."""
    probs = [0.9, 0.7, 0.1, 0.1, 0.1, 0.3, 0.5, 0.1]
    spans = extract_spans(TEXT, WORDS, probs, threshold=0.3, min_span_chars=1, merge_gap_chars=0)
    assert spans == [
        Span(0, 10, "Alpha beta", pytest.approx(0.8)),  # type: ignore[arg-type]
        Span(24, 36, "epsilon zeta", pytest.approx(0.4)),  # type: ignore[arg-type]
    ]


def test_spans_merge_across_small_gaps_and_short_ones_drop() -> None:
    """A gap of at most merge_gap_chars joins spans; short spans are dropped after merging."""
    probs = [0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1]
    merged = extract_spans(TEXT, WORDS, probs, threshold=0.5, min_span_chars=1, merge_gap_chars=6)
    assert [(s.start, s.end, s.text) for s in merged] == [(0, 16, "Alpha beta gamma")]
    assert merged[0].score == pytest.approx(0.9)
    apart = extract_spans(TEXT, WORDS, probs, threshold=0.5, min_span_chars=1, merge_gap_chars=5)
    assert [s.text for s in apart] == ["Alpha", "gamma"]
    assert (
        extract_spans(TEXT, WORDS, probs, threshold=0.5, min_span_chars=6, merge_gap_chars=5) == []
    )


def test_threshold_is_inclusive_and_validated() -> None:
    """A token exactly at threshold counts; out-of-range parameters raise."""
    spans = extract_spans("abcdefghij", [(0, 10)], [0.2], threshold=0.2, min_span_chars=10)
    assert [s.text for s in spans] == ["abcdefghij"]
    with pytest.raises(ValueError, match="threshold"):
        extract_spans("a", [(0, 1)], [0.5], threshold=1.5)
    with pytest.raises(ValueError, match="same length"):
        extract_spans("a", [(0, 1)], [])


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=6), st.floats(0, 1), st.integers(0, 3)),
        max_size=25,
    ),
    st.floats(0, 1),
    st.integers(0, 12),
    st.integers(0, 25),
)
def test_span_invariants(
    pieces: list[tuple[str, float, int]], threshold: float, min_chars: int, gap: int
) -> None:
    """Spans are ordered, disjoint, trimmed, long enough, and text[start:end] == span.text."""
    text, offsets, probs = "", [], []
    for piece, prob, spaces in pieces:
        start = len(text)
        text += piece
        offsets.append((start, len(text)))
        probs.append(prob)
        text += " " * spaces
    spans = extract_spans(
        text, offsets, probs, threshold=threshold, min_span_chars=min_chars, merge_gap_chars=gap
    )
    for span in spans:
        assert text[span.start : span.end] == span.text
        assert span.end - span.start >= max(min_chars, 1)
        assert span.text == span.text.strip()
        assert threshold - 1e-9 <= span.score <= 1.0 + 1e-9
    for left, right in itertools.pairwise(spans):
        assert left.end < right.start


def test_sentence_ranges_and_scores() -> None:
    """Sentences split at terminal punctuation (ASCII and CJK) and blank lines."""
    text = "First one. Second one!\n\nThird 東京です。四番目？ Last"
    ranges = sentence_ranges(text)
    assert [text[a:b] for a, b in ranges] == [
        "First one.",
        "Second one!",
        "Third 東京です。",
        "四番目？",
        "Last",
    ]
    offsets = [(0, 5), (6, 10), (11, 17), (18, 22)]
    scores = sentence_scores(text, offsets, [1.0, 0.5, 0.2, 0.4])
    assert scores[0].score == pytest.approx(0.75)
    assert scores[1].score == pytest.approx(0.3)
    assert scores[-1].score == 0.0
    assert sentence_ranges("   ") == []


def test_join_spans_orders_by_position() -> None:
    """Trimmed text keeps the spans' original order whatever order they come in."""
    spans = [Span(10, 14, "late", 0.5), Span(0, 5, "early", 0.9)]
    assert join_spans(spans, " | ") == "early | late"
    assert join_spans([], " | ") == ""
