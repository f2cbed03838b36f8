"""Corrective RAG: the three-way action, threshold calibration, strips and the refiner.

Pure decisions are checked with exact cases and hypothesis properties; the evaluator and
the refiner run on the session's tiny random checkpoints and are checked against the
roles' own outputs (never hard-coded numbers, which would only pin random weights).
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crag_integrations import RelevanceGrader, Reranker, get_engine
from crag_integrations.crag import (
    DEFAULT_LOWER,
    DEFAULT_UPPER,
    CragEvaluator,
    KnowledgeRefiner,
    calibrate_thresholds,
    decide_action,
    document_actions,
    select_strips,
    split_strips,
)
from crag_integrations.errors import IncompatibleModelError

QUERY = "What causes rain?"
DOCS = [
    "Rain forms when water vapor in the atmosphere condenses into droplets.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]
LONG_DOCS = [
    "Rain forms when water vapor condenses. The droplets fall! Clouds are water.",
    "The capital of Japan is Tokyo. It is also its largest city.",
    "   ",
    "A reranker sorts retrieved chunks. The most relevant ones come first? Yes.",
]

scores_st = st.lists(st.floats(-50, 50, allow_nan=False), max_size=12)


# --------------------------------------------------------------------------------------
# decide_action / document_actions


def test_action_bands_are_inclusive_at_upper_and_exclusive_at_lower() -> None:
    assert decide_action([0.6], upper=0.6, lower=0.2) == "correct"
    assert decide_action([0.2], upper=0.6, lower=0.2) == "ambiguous"
    assert decide_action([0.19999], upper=0.6, lower=0.2) == "incorrect"
    assert decide_action([0.1, 0.3, 0.7], upper=0.6, lower=0.2) == "correct"
    assert decide_action([], upper=0.6, lower=0.2) == "incorrect"
    assert document_actions([0.1, 0.3, 0.7], upper=0.6, lower=0.2) == (
        "incorrect",
        "ambiguous",
        "correct",
    )


def test_action_rejects_lower_above_upper() -> None:
    with pytest.raises(ValueError, match="must not exceed"):
        decide_action([0.5], upper=0.2, lower=0.6)


@given(scores_st, st.floats(-60, 60), st.floats(0, 60))
def test_action_matches_its_definition_and_the_document_bands(
    scores: list[float], lower: float, gap: float
) -> None:
    upper = lower + gap
    action = decide_action(scores, upper=upper, lower=lower)
    bands = document_actions(scores, upper=upper, lower=lower)
    assert len(bands) == len(scores)
    assert (action == "correct") == any(s >= upper for s in scores)
    assert (action == "incorrect") == all(s < lower for s in scores)
    # The query's action is the best of its documents' own bands.
    assert (action == "correct") == ("correct" in bands)
    assert (action == "incorrect") == all(b == "incorrect" for b in bands)


# --------------------------------------------------------------------------------------
# calibrate_thresholds


def test_calibration_exact_case_and_ties_count_together() -> None:
    assert calibrate_thresholds(
        [0.9, 0.8, 0.3, 0.2, 0.1],
        [True, True, False, True, False],
        precision_at_upper=1.0,
        recall_above_lower=1.0,
    ) == (0.8, 0.2)
    # Two documents tied at 0.5, one relevant: "score >= 0.5" is only 50% precise.
    upper, _ = calibrate_thresholds([0.5, 0.5], [True, False], precision_at_upper=1.0)
    assert upper > 0.5


def test_calibration_without_a_precise_threshold_never_fires_correct() -> None:
    upper, lower = calibrate_thresholds([0.9, 0.1], [False, True], precision_at_upper=1.0)
    assert upper > 0.9
    assert lower == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("scores", "labels", "kwargs"),
    [
        ([], [], {}),
        ([0.1], [True, False], {}),
        ([0.1, 0.2], [False, False], {}),
        ([0.1], [True], {"precision_at_upper": 0.0}),
        ([0.1], [True], {"recall_above_lower": 1.5}),
        ([math.nan], [True], {}),
    ],
)
def test_calibration_rejects_unusable_inputs(
    scores: list[float], labels: list[bool], kwargs: dict[str, float]
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several messages, one contract
        calibrate_thresholds(scores, labels, **kwargs)


@given(
    st.lists(
        st.tuples(st.floats(-20, 20, allow_nan=False), st.booleans()), min_size=1, max_size=40
    ).filter(lambda rows: any(label for _, label in rows)),
    st.floats(0.05, 1.0),
    st.floats(0.05, 1.0),
)
def test_calibrated_thresholds_meet_their_targets(
    rows: list[tuple[float, bool]], precision: float, recall: float
) -> None:
    scores = [s for s, _ in rows]
    labels = [label for _, label in rows]
    upper, lower = calibrate_thresholds(
        scores, labels, precision_at_upper=precision, recall_above_lower=recall
    )
    assert lower <= upper
    above = [label for s, label in rows if s >= upper]
    if above:
        assert sum(above) / len(above) >= precision - 1e-12
    relevant = [s for s, label in rows if label]
    missed = sum(s < lower for s in relevant)
    assert missed <= (1 - recall) * len(relevant) + 1e-9


# --------------------------------------------------------------------------------------
# split_strips / select_strips


def test_split_strips_exact_cases() -> None:
    text = "One. Two! Three? Four."
    assert split_strips(text) == [(0, 4), (5, 9), (10, 16), (17, 22)]
    assert split_strips(text, mode="sentence_groups", group_size=3) == [(0, 16), (17, 22)]
    assert split_strips("a b  c d e", mode="words", window_words=2) == [(0, 3), (5, 8), (9, 10)]
    assert split_strips("   \n\t ") == []
    assert split_strips("") == []
    giant = "x" * 10_000
    for mode in ("sentences", "sentence_groups", "words"):
        assert split_strips(giant, mode=mode) == [(0, 10_000)]  # type: ignore[arg-type]
    cjk = "東京は日本の首都です。 Café naïve! 🚀 done."
    assert [cjk[a:b] for a, b in split_strips(cjk)] == [
        "東京は日本の首都です。",
        "Café naïve!",
        "🚀 done.",
    ]


@pytest.mark.parametrize("kwargs", [{"mode": "paragraphs"}, {"group_size": 0}, {"window_words": 0}])
def test_split_strips_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several messages, one contract
        split_strips("One. Two.", **kwargs)  # type: ignore[arg-type]


texts_st = st.text(alphabet=st.sampled_from(list("ab é東🚀.!?。\n\t ")), max_size=80)


@settings(max_examples=200)
@given(
    texts_st,
    st.sampled_from(["sentences", "sentence_groups", "words"]),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_strips_are_exact_ordered_disjoint_and_cover_every_visible_character(
    text: str, mode: str, group_size: int, window_words: int
) -> None:
    strips = split_strips(
        text,
        mode=mode,  # type: ignore[arg-type]
        group_size=group_size,
        window_words=window_words,
    )
    covered = set()
    previous_end = 0
    for start, end in strips:
        strip = text[start:end]
        assert strip, "strips are non-empty"
        assert strip == strip.strip(), "strips are whitespace-trimmed"
        assert start >= previous_end, "strips are ordered and do not overlap"
        previous_end = end
        covered.update(range(start, end))
    visible = {i for i, ch in enumerate(text) if not ch.isspace()}
    assert visible <= covered
    if mode == "words":
        counts = [len(text[a:b].split()) for a, b in strips]
        assert all(c == window_words for c in counts[:-1])
        assert not counts or 1 <= counts[-1] <= window_words
    if mode == "sentence_groups":
        sentences = split_strips(text)
        assert len(strips) == math.ceil(len(sentences) / group_size)


def test_select_strips_exact_cases() -> None:
    assert select_strips([0.9, 0.1, 0.5, 0.7], threshold=0.4, top_k=2) == [0, 3]
    assert select_strips([0.9, 0.1, 0.5], threshold=None, top_k=None) == [0, 1, 2]
    assert select_strips([0.5, 0.5, 0.5], threshold=None, top_k=2) == [0, 1]  # ties: earlier
    assert select_strips([0.1, 0.2], threshold=0.5, top_k=None) == []
    assert select_strips([0.9], threshold=None, top_k=0) == []
    assert select_strips([], threshold=0.1, top_k=3) == []


@given(
    st.lists(st.floats(0, 1), max_size=20),
    st.one_of(st.none(), st.floats(0, 1)),
    st.one_of(st.none(), st.integers(0, 25)),
)
def test_selected_strips_are_the_best_survivors_in_original_order(
    scores: list[float], threshold: float | None, top_k: int | None
) -> None:
    kept = select_strips(scores, threshold=threshold, top_k=top_k)
    assert kept == sorted(set(kept))
    eligible = [i for i, s in enumerate(scores) if threshold is None or s >= threshold]
    assert set(kept) <= set(eligible)
    expected_count = len(eligible) if top_k is None else min(top_k, len(eligible))
    assert len(kept) == expected_count
    if kept:
        worst_kept = min(scores[i] for i in kept)
        assert all(scores[i] <= worst_kept for i in eligible if i not in kept)


# --------------------------------------------------------------------------------------
# CragEvaluator on tiny checkpoints


@pytest.fixture
def rerank(checkpoints: dict[str, Path]) -> str:
    return str(checkpoints["bert-rerank"])


def test_evaluator_probability_scale_is_the_rerankers_sigmoid(rerank: str) -> None:
    expected = [r.probability for r in Reranker(model=rerank).score_texts(QUERY, DOCS)]
    evaluation = CragEvaluator(model=rerank).evaluate(QUERY, DOCS)
    assert evaluation.scores == pytest.approx(expected)
    assert (evaluation.upper, evaluation.lower) == (DEFAULT_UPPER, DEFAULT_LOWER)
    assert evaluation.scale == "probability"
    assert evaluation.action == decide_action(expected, upper=DEFAULT_UPPER, lower=DEFAULT_LOWER)
    assert evaluation.document_actions == document_actions(
        evaluation.scores, upper=DEFAULT_UPPER, lower=DEFAULT_LOWER
    )


def test_evaluator_logit_scale_uses_the_rerankers_raw_logits(rerank: str) -> None:
    logits = [r.score for r in Reranker(model=rerank).score_texts(QUERY, DOCS)]
    # The CRAG reference thresholds, which live on a logit scale.
    evaluator = CragEvaluator(model=rerank, scale="logit", upper=0.592, lower=-0.995)
    evaluation = evaluator.evaluate(QUERY, DOCS)
    assert evaluation.scores == pytest.approx(logits)
    assert evaluation.action == decide_action(logits, upper=0.592, lower=-0.995)


@pytest.mark.parametrize(
    ("name", "relevant_labels"),
    [("bert-binary", None), ("bert-osmosis", None), ("bert-osmosis", ("ADDR_DIRECT",))],
)
def test_evaluator_on_graders_uses_the_graders_relevance_probability(
    checkpoints: dict[str, Path], name: str, relevant_labels: tuple[str, ...] | None
) -> None:
    path = str(checkpoints[name])
    grades = RelevanceGrader(model=path, relevant_labels=relevant_labels).grade(QUERY, DOCS)
    expected = [g.probability for g in grades]
    evaluation = CragEvaluator(model=path, relevant_labels=relevant_labels).evaluate(QUERY, DOCS)
    assert evaluation.scores == pytest.approx(expected)
    assert all(0.0 <= s <= 1.0 for s in evaluation.scores)


def test_each_action_is_reached_by_thresholds_set_around_the_real_scores(rerank: str) -> None:
    scores = CragEvaluator(model=rerank).evaluate(QUERY, DOCS).scores
    low, high = min(scores), max(scores)
    assert 0.0 < low <= high < 1.0
    assert CragEvaluator(model=rerank, upper=high, lower=0.0).evaluate(QUERY, DOCS).action == (
        "correct"
    )
    assert CragEvaluator(model=rerank, upper=1.0, lower=low).evaluate(QUERY, DOCS).action == (
        "ambiguous"
    )
    just_above = math.nextafter(high, 1.0)
    incorrect = CragEvaluator(model=rerank, upper=1.0, lower=just_above).evaluate(QUERY, DOCS)
    assert incorrect.action == "incorrect"
    assert set(incorrect.document_actions) == {"incorrect"}


def test_evaluator_grades_all_documents_in_one_forward_pass(rerank: str) -> None:
    evaluator = CragEvaluator(model=rerank)
    evaluator.evaluate(QUERY, DOCS[:1])  # load first
    # Texts no other test scores, so no score cache can answer them.
    fresh = [f"{doc} (copy {i} for the one-pass check)" for i, doc in enumerate(DOCS * 4)]
    before = get_engine(rerank).forward_passes
    evaluation = evaluator.evaluate(QUERY, fresh)
    assert get_engine(rerank).forward_passes - before == 1
    assert len(evaluation.scores) == 12


def test_no_documents_is_incorrect_and_loads_nothing(tmp_path: Path) -> None:
    # A model directory that does not even exist: any attempt to load it would raise.
    missing = str(tmp_path / "never-built")
    evaluator = CragEvaluator(model=missing)
    evaluation = evaluator.evaluate(QUERY, [])
    assert evaluation.action == "incorrect"
    assert evaluation.scores == ()
    assert evaluation.document_actions == ()
    assert asyncio.run(evaluator.aevaluate(QUERY, [])).action == "incorrect"
    assert KnowledgeRefiner(model=missing).refine(QUERY, []) == []
    assert [d.num_strips for d in KnowledgeRefiner(model=missing).refine(QUERY, ["", " "])] == [
        0,
        0,
    ]
    assert get_engine(missing).is_loaded is False


def test_async_evaluation_equals_sync(checkpoints: dict[str, Path]) -> None:
    for name in ("bert-rerank", "bert-osmosis"):
        evaluator = CragEvaluator(model=str(checkpoints[name]))
        sync = evaluator.evaluate(QUERY, DOCS)
        assert asyncio.run(evaluator.aevaluate(QUERY, DOCS)) == sync


def test_logit_scale_on_a_classifier_fails_before_any_forward_pass(
    checkpoints: dict[str, Path],
) -> None:
    path = str(checkpoints["bert-binary"])
    get_engine(path).load()
    before = get_engine(path).forward_passes
    with pytest.raises(ValueError, match="one-logit"):
        CragEvaluator(model=path, scale="logit", upper=0.5, lower=-0.5).evaluate(QUERY, DOCS)
    assert get_engine(path).forward_passes == before


def test_token_classifier_is_refused_with_a_pointer(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(IncompatibleModelError, match="EvidenceHighlighter"):
        CragEvaluator(model=str(checkpoints["bert-token"])).evaluate(QUERY, DOCS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"upper": 0.2, "lower": 0.6},
        {"upper": 1.5},
        {"lower": -0.1},
        {"scale": "softmax"},
    ],
)
def test_evaluator_rejects_bad_configuration_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several messages, one contract
        CragEvaluator(model="unused", **kwargs)  # type: ignore[arg-type]


def test_evaluator_applies_the_shared_input_checks(rerank: str) -> None:
    evaluator = CragEvaluator(model=rerank)
    with pytest.raises(ValueError, match="query"):
        evaluator.evaluate("  ", DOCS)
    with pytest.raises(TypeError, match="wrap it"):
        evaluator.evaluate(QUERY, "a single string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        evaluator.evaluate(QUERY, ["ok", None])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------
# KnowledgeRefiner


def _all_strip_texts(docs: list[str]) -> list[str]:
    return [doc[a:b] for doc in docs for a, b in split_strips(doc)]


def test_refiner_scores_every_strip_of_every_document_in_one_forward_pass(
    rerank: str,
) -> None:
    refiner = KnowledgeRefiner(model=rerank, threshold=0.0)
    refiner.refine(QUERY, DOCS[:1])  # load first
    # A query no other test uses, so no score cache can answer these strips.
    query = "Which sentences explain the weather? (one-pass check)"
    before = get_engine(rerank).forward_passes
    refined = refiner.refine(query, LONG_DOCS)
    assert get_engine(rerank).forward_passes - before == 1
    strips = _all_strip_texts(LONG_DOCS)
    assert sum(d.num_strips for d in refined) == len(strips) == 8
    # Each strip is scored on its own (not the whole document): same as the reranker.
    expected = [r.probability for r in Reranker(model=rerank).score_texts(query, strips)]
    got = [s.score for d in refined for s in d.strips]
    assert got == pytest.approx(expected)


def test_refined_text_recomposes_kept_strips_in_original_order_with_exact_offsets(
    rerank: str,
) -> None:
    refiner = KnowledgeRefiner(model=rerank, threshold=None, top_k=5, separator=" | ")
    refined = refiner.refine(QUERY, LONG_DOCS)
    assert [d.index for d in refined] == list(range(len(LONG_DOCS)))
    assert sum(len(d.strips) for d in refined) == 5
    for doc in refined:
        assert doc.text == LONG_DOCS[doc.index]
        starts = [s.start for s in doc.strips]
        assert starts == sorted(starts)
        for span in doc.strips:
            assert doc.text[span.start : span.end] == span.text
        assert doc.refined_text == " | ".join(s.text for s in doc.strips)


def test_refiner_threshold_and_top_k_pick_from_all_strip_scores(rerank: str) -> None:
    everything = KnowledgeRefiner(model=rerank, threshold=0.0).refine(QUERY, LONG_DOCS)
    all_scores = sorted((s.score for d in everything for s in d.strips), reverse=True)
    cut = all_scores[len(all_scores) // 2]
    by_threshold = KnowledgeRefiner(model=rerank, threshold=cut).refine(QUERY, LONG_DOCS)
    kept = [s.score for d in by_threshold for s in d.strips]
    assert sorted(kept, reverse=True) == [s for s in all_scores if s >= cut]
    top3 = KnowledgeRefiner(model=rerank, threshold=None, top_k=3).refine(QUERY, LONG_DOCS)
    assert sorted((s.score for d in top3 for s in d.strips), reverse=True) == all_scores[:3]
    both = KnowledgeRefiner(model=rerank, threshold=cut, top_k=2).refine(QUERY, LONG_DOCS)
    assert sorted((s.score for d in both for s in d.strips), reverse=True) == all_scores[:2]


def test_refiner_modes_change_the_strips(rerank: str) -> None:
    doc = LONG_DOCS[0]
    words = KnowledgeRefiner(model=rerank, mode="words", window_words=4, threshold=0.0)
    refined = words.refine(QUERY, [doc])[0]
    assert [s.text for s in refined.strips] == [
        doc[a:b] for a, b in split_strips(doc, mode="words", window_words=4)
    ]
    groups = KnowledgeRefiner(model=rerank, mode="sentence_groups", group_size=2, threshold=0.0)
    assert groups.refine(QUERY, [doc])[0].num_strips == 2


def test_unsplittable_documents_refine_to_the_documented_result(rerank: str) -> None:
    giant = "x" * 5_000
    refiner = KnowledgeRefiner(model=rerank, threshold=0.0)
    empty, blank, token = refiner.refine(QUERY, ["", " \n\t ", giant])
    for doc in (empty, blank):
        assert (doc.refined_text, doc.strips, doc.num_strips) == ("", (), 0)
    assert token.num_strips == 1
    assert token.refined_text == giant
    assert (token.strips[0].start, token.strips[0].end) == (0, len(giant))
    nothing_kept = KnowledgeRefiner(model=rerank, threshold=1.0).refine(QUERY, [giant])[0]
    assert (nothing_kept.refined_text, nothing_kept.strips, nothing_kept.num_strips) == (
        "",
        (),
        1,
    )


def test_refiner_logit_scale_thresholds_raw_logits(rerank: str) -> None:
    strips = _all_strip_texts(LONG_DOCS)
    logits = [r.score for r in Reranker(model=rerank).score_texts(QUERY, strips)]
    cut = sorted(logits)[len(logits) // 2]
    refined = KnowledgeRefiner(model=rerank, scale="logit", threshold=cut).refine(QUERY, LONG_DOCS)
    assert sorted(s.score for d in refined for s in d.strips) == pytest.approx(
        sorted(v for v in logits if v >= cut)
    )


def test_async_refinement_equals_sync(checkpoints: dict[str, Path]) -> None:
    refiner = KnowledgeRefiner(model=str(checkpoints["bert-binary"]), threshold=None, top_k=4)
    assert asyncio.run(refiner.arefine(QUERY, LONG_DOCS)) == refiner.refine(QUERY, LONG_DOCS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": None, "top_k": None},
        {"top_k": -1},
        {"threshold": 1.5},
        {"mode": "paragraphs"},
        {"window_words": 0},
    ],
)
def test_refiner_rejects_bad_configuration_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several messages, one contract
        KnowledgeRefiner(model="unused", **kwargs)  # type: ignore[arg-type]


def test_refiner_never_mutates_or_reorders_the_callers_list(rerank: str) -> None:
    docs = list(LONG_DOCS)
    refined = KnowledgeRefiner(model=rerank, threshold=0.0).refine(QUERY, docs)
    assert docs == LONG_DOCS
    assert [d.text for d in refined] == docs
    assert all(re.sub(r"\s+", "", d.refined_text) == re.sub(r"\s+", "", d.text) for d in refined)


def test_knowledge_for_generation_falls_back_only_for_a_correct_retrieval() -> None:
    """Kept strips are the knowledge; a correct retrieval with no kept strip falls back to
    its documents graded correct, whole; other actions get what was kept (maybe nothing)."""
    from crag_integrations.crag import RefinedDocument, knowledge_for_generation
    from crag_integrations.types import Span

    kept = RefinedDocument(
        index=0,
        text="Rain falls. Tokyo.",
        refined_text="Rain falls.",
        strips=(Span(start=0, end=11, text="Rain falls.", score=0.9),),
        num_strips=2,
    )
    empty = [
        RefinedDocument(index=i, text=t, refined_text="", strips=(), num_strips=1)
        for i, t in enumerate(["Rain.", "Paris.", "Tokyo."])
    ]
    bands = ["correct", "ambiguous", "correct"]
    assert knowledge_for_generation([kept], ["correct"], "correct") == ["Rain falls."]
    assert knowledge_for_generation(empty, bands, "correct") == ["Rain.", "Tokyo."]
    assert knowledge_for_generation(empty, bands, "ambiguous") == []
    with pytest.raises(ValueError, match="one document action"):
        knowledge_for_generation(empty, bands[:1], "correct")
