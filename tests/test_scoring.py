"""Pure decision functions: exact cases and properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crag_integrations import IncompatibleModelError, Span, TokenScores
from crag_integrations.scoring import (
    OSMOSIS_LABELS,
    best_window,
    character_scores,
    evidence_label_mask,
    evidence_runs,
    evidence_windows,
    extract_spans,
    extract_window_spans,
    highlight_sentence_ranges,
    join_spans,
    merge_runs,
    relevance_probability,
    relevant_label_mask,
    select_top,
    sentence_ranges,
    sentence_scores,
    sigmoid,
    softmax,
    window_sentence_scores,
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
    # Unnamed labels: every label but label 0, as acl-verbatim's .process() sums them.
    assert evidence_label_mask(["LABEL_0", "LABEL_1", "LABEL_2"]) == (False, True, True)
    with pytest.raises(IncompatibleModelError, match="evidence_labels"):
        evidence_label_mask(["A", "B", "C"])


TEXT = "Alpha beta gamma. Delta epsilon zeta. Eta theta iota."
#        0     6    11    18    24      32    38  42    48
WORDS = [(0, 5), (6, 10), (11, 16), (16, 17), (18, 23), (24, 31), (32, 36), (36, 37)]


def test_spans_from_consecutive_evidence_tokens() -> None:
    """Consecutive tokens at or above threshold form one span scored by their maximum."""
    probs = [0.9, 0.7, 0.1, 0.1, 0.1, 0.3, 0.5, 0.1]
    spans = extract_spans(TEXT, WORDS, probs, threshold=0.3, min_span_chars=1, merge_gap_chars=0)
    assert spans == [Span(0, 10, "Alpha beta", 0.9), Span(24, 36, "epsilon zeta", 0.5)]


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
    evidence = [(a, b) for (a, b), p in zip(offsets, probs, strict=True) if p >= threshold]
    for span in spans:
        assert text[span.start : span.end] == span.text
        assert span.end - span.start >= max(min_chars, 1)
        # Bounds are token bounds, as the reference takes them (no whitespace trimming).
        assert span.start in {a for a, _ in evidence} and span.end in {b for _, b in evidence}
        inside = [p for (a, b), p in zip(offsets, probs, strict=True) if span.start <= a < span.end]
        assert span.score == max(p for p in inside if p >= threshold)
    for left, right in itertools.pairwise(spans):
        assert left.end + gap < right.start


def test_runs_end_at_any_token_that_is_not_evidence() -> None:
    """A token below threshold or without characters ends a run; bounds are token bounds."""
    offsets = [(0, 4), (4, 4), (5, 9), (10, 14), (15, 19)]
    assert evidence_runs(offsets, [0.5, 0.9, 0.6, 0.7, 0.1], threshold=0.5) == [
        (0, 4, 0.5),
        (5, 14, 0.7),
    ]
    assert evidence_runs(offsets, [0.1] * 5, threshold=0.5) == []
    with pytest.raises(ValueError, match="same length"):
        evidence_runs(offsets, [0.5], threshold=0.5)


def test_merging_pools_sorts_and_takes_the_larger_end_and_score() -> None:
    """Raw spans of any windows merge when start - previous end <= gap, then short ones go."""
    runs = [(20, 30, 0.4), (0, 12, 0.3), (5, 8, 0.9), (32, 34, 0.2), (60, 64, 0.8)]
    assert merge_runs(runs, min_span_chars=0, merge_gap_chars=2) == [
        (0, 12, 0.9),
        (20, 34, 0.4),
        (60, 64, 0.8),
    ]
    assert merge_runs(runs, min_span_chars=0, merge_gap_chars=1) == [
        (0, 12, 0.9),
        (20, 30, 0.4),
        (32, 34, 0.2),
        (60, 64, 0.8),
    ]
    # The length filter applies after merging: two short spans can make one long enough.
    assert merge_runs([(0, 4, 0.5), (6, 10, 0.6)], min_span_chars=10, merge_gap_chars=2) == [
        (0, 10, 0.6)
    ]
    assert merge_runs([(0, 4, 0.5), (6, 10, 0.6)], min_span_chars=10, merge_gap_chars=1) == []


def test_windows_are_read_on_their_own_not_averaged() -> None:
    """A token one window scores high is evidence, whatever an overlapping window says."""
    text = "aaaa bbbb cccc dddd"
    tokens = [(0, 4), (5, 9), (10, 14), (15, 19)]
    first = (tokens[:3], [0.1, 0.1, 0.9])
    second = (tokens[2:], [0.1, 0.6])
    spans = extract_window_spans(text, [first, second], min_span_chars=1, merge_gap_chars=0)
    assert spans == [Span(10, 14, "cccc", 0.9), Span(15, 19, "dddd", 0.6)]
    # Averaged, "cccc" would score 0.5; below a 0.6 threshold only one window's view counts.
    high = extract_window_spans(
        text, [first, second], threshold=0.6, min_span_chars=1, merge_gap_chars=1
    )
    assert high == [Span(10, 19, "cccc dddd", 0.9)]


def test_evidence_windows_slice_the_engine_result() -> None:
    """'max' gives each window's own probabilities, 'mean' the averaged sequence."""
    scores = TokenScores(
        offsets=((0, 4), (5, 9), (10, 14)),
        probabilities=((0.9, 0.1), (0.5, 0.5), (0.2, 0.8)),
        num_windows=2,
        window_ranges=((0, 2), (1, 3)),
        window_probabilities=(((0.9, 0.1), (0.8, 0.2)), ((0.2, 0.8), (0.2, 0.8))),
    )
    mask = (False, True)
    assert evidence_windows(scores, mask) == [
        (((0, 4), (5, 9)), [0.1, 0.2]),
        (((5, 9), (10, 14)), [0.8, 0.8]),
    ]
    assert evidence_windows(scores, mask, pooling="mean") == [
        (((0, 4), (5, 9), (10, 14)), [0.1, 0.5, 0.8])
    ]
    with pytest.raises(ValueError, match="pooling"):
        evidence_windows(scores, mask, pooling="median")  # type: ignore[arg-type]


@st.composite
def _windowed(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]], list[float], list[int]]:
    """A tokenised text with probabilities, and window starts that overlap by >= 1 token."""
    pieces = draw(
        st.lists(st.tuples(st.text("ab c", min_size=1, max_size=4), st.floats(0, 1)), min_size=1)
    )
    text, offsets, probs = "", [], []
    for piece, prob in pieces:
        text += " " * draw(st.integers(0, 2))
        offsets.append((len(text), len(text) + len(piece)))
        text += piece
        probs.append(prob)
    size = draw(st.integers(2, 6))
    step = draw(st.integers(1, size - 1))
    return text, offsets, probs, [size, step]


@given(_windowed(), st.floats(0, 1), st.integers(0, 8), st.integers(0, 4))
def test_consistent_overlapping_windows_read_like_one(
    case: tuple[str, list[tuple[int, int]], list[float], list[int]],
    threshold: float,
    min_chars: int,
    gap: int,
) -> None:
    """Windows that agree where they overlap give the spans and sentences of one window."""
    text, offsets, probs, (size, step) = case
    windows = [
        (offsets[first : first + size], probs[first : first + size])
        for first in range(0, max(1, len(offsets) - size + step), step)
    ]
    settings = {"threshold": threshold, "min_span_chars": min_chars, "merge_gap_chars": gap}
    assert extract_window_spans(text, windows, **settings) == extract_spans(  # type: ignore[arg-type]
        text,
        offsets,
        probs,
        **settings,  # type: ignore[arg-type]
    )
    assert window_sentence_scores(text, windows, threshold=threshold) == sentence_scores(
        text, offsets, probs, threshold=threshold
    )


def test_sentence_ranges() -> None:
    """CRAG strips split at terminal punctuation (ASCII and CJK) and blank lines."""
    text = "First one. Second one!\n\nThird 東京です。四番目？ Last"
    ranges = sentence_ranges(text)
    assert [text[a:b] for a, b in ranges] == [
        "First one.",
        "Second one!",
        "Third 東京です。",
        "四番目？",
        "Last",
    ]
    assert sentence_ranges("   ") == []


def test_highlight_sentences_follow_the_reference_pattern() -> None:
    """acl-verbatim's splitter: runs of .!? then whitespace or the end, blank lines, the end."""
    text = "  First one... Second one?!\n\nThird 東京です。四番目？ Pi is 3.14 here\n\n\n  \nEnd!"
    assert [text[a:b] for a, b in highlight_sentence_ranges(text)] == [
        "First one...",
        "Second one?!",
        "Third 東京です。四番目？ Pi is 3.14 here",
        "End!",
    ]
    assert highlight_sentence_ranges("") == [] and highlight_sentence_ranges(" \n\n ") == []
    assert highlight_sentence_ranges("No end") == [(0, 6)]


def test_sentence_scores_average_character_scores() -> None:
    """A character scores its best evidence token (0 if none); a sentence their mean."""
    text = "First one. Second one!\n\nLast"
    offsets = [(0, 5), (6, 10), (11, 17), (18, 22)]
    scores = sentence_scores(text, offsets, [1.0, 0.5, 0.2, 0.4], threshold=0.2)
    assert [s.text for s in scores] == ["First one.", "Second one!", "Last"]
    assert scores[0].score == pytest.approx((5 * 1.0 + 4 * 0.5) / 10)
    assert scores[1].score == pytest.approx((6 * 0.2 + 4 * 0.4) / 11)
    assert scores[2].score == 0.0
    strict = sentence_scores(text, offsets, [1.0, 0.5, 0.2, 0.4], threshold=0.45)
    assert [s.score for s in strict] == pytest.approx([0.7, 0.0, 0.0])
    with pytest.raises(ValueError, match="same length"):
        sentence_scores(text, offsets, [1.0])


def test_character_scores_take_the_maximum_over_windows() -> None:
    """Overlapping windows: each character keeps its best above-threshold probability."""
    windows = [([(0, 3), (3, 6)], [0.3, 0.9]), ([(3, 6), (6, 8)], [0.5, 0.1])]
    assert character_scores(9, windows, threshold=0.2) == [0.3] * 3 + [0.9] * 3 + [0.0] * 3
    assert character_scores(9, windows, threshold=0.4) == [0.0] * 3 + [0.9] * 3 + [0.0] * 3


def test_join_spans_orders_by_position() -> None:
    """Trimmed text keeps the spans' original order whatever order they come in."""
    spans = [Span(10, 14, "late", 0.5), Span(0, 5, "early", 0.9)]
    assert join_spans(spans, " | ") == "early | late"
    assert join_spans([], " | ") == ""
