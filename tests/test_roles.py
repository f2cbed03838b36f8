"""The three roles and the pipeline on tiny real checkpoints, including every bad input."""

from __future__ import annotations

import asyncio
import copy
import math
from pathlib import Path

import pytest

from crag_integrations import (
    EngineConfig,
    EvidenceHighlighter,
    IncompatibleModelError,
    RelevanceGrader,
    Reranker,
    RerankGradeTrimPipeline,
    get_engine,
)
from crag_integrations.scoring import sigmoid
from crag_integrations.testing import save_tiny_checkpoint

QUERY = "what causes rain?"
TEXTS = [
    "Rain forms when water vapor in the atmosphere condenses into droplets.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Climate change affects urban infrastructure, water resources and public health.",
    "The capital of Japan is Tokyo, which is also its largest city.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]
UNICODE_TEXTS = [
    "東京は日本の首都です。 The capital of Japan is Tokyo.",
    "Emoji 🚀🔥 and flags 🇫🇷 sit beside words about rain and water vapour.",
    "Combining marks: cafe\u0301 nai\u0308ve re\u0301sume\u0301 — rain in Zu\u0308rich.",
    "Ｆｕｌｌｗｉｄｔｈ letters and ligatures ﬁne ﬂow with rain drops.",
]


# -- Reranker -------------------------------------------------------------------------


def test_rank_sorts_cuts_and_points_back_to_input(reranker_path: str) -> None:
    """rank() is score() sorted descending and cut to top_n, with original indices."""
    reranker = Reranker(model=reranker_path, top_n=3)
    scores = reranker.score(QUERY, TEXTS)
    ranked = reranker.rank(QUERY, TEXTS)
    assert [r.index for r in ranked] == sorted(range(5), key=lambda i: -scores[i])[:3]
    for r in ranked:
        assert r.text is TEXTS[r.index]
        assert r.score == scores[r.index]
        assert r.probability == pytest.approx(sigmoid(r.score))
        assert r.num_windows == 1


def test_rank_threshold_applies_before_the_cut(reranker_path: str) -> None:
    """score_threshold drops low scores first; top_n then cuts what is left."""
    reranker = Reranker(model=reranker_path)
    scores = sorted(reranker.score(QUERY, TEXTS), reverse=True)
    middle = scores[2]
    ranked = reranker.rank(QUERY, TEXTS, score_threshold=middle, top_n=10)
    assert [r.score for r in ranked] == scores[:3]
    assert len(reranker.rank(QUERY, TEXTS, score_threshold=middle, top_n=1)) == 1


def test_reranker_refuses_a_classifier(grader_path: str) -> None:
    """A two-label checkpoint is a grader, not a reranker: say which role to use."""
    with pytest.raises(IncompatibleModelError, match="RelevanceGrader"):
        Reranker(model=grader_path).rank(QUERY, TEXTS)


def test_async_rank_equals_sync(reranker_path: str) -> None:
    """arank gives exactly what rank gives."""
    reranker = Reranker(model=reranker_path, top_n=4)
    assert asyncio.run(reranker.arank(QUERY, TEXTS)) == reranker.rank(QUERY, TEXTS)


# -- Grader ---------------------------------------------------------------------------


def test_binary_grader_uses_the_named_positive_label(grader_path: str) -> None:
    """Probability of 'relevant' decides; the distribution holds both labels."""
    grades = RelevanceGrader(model=grader_path, threshold=0.5).grade(QUERY, TEXTS)
    for grade in grades:
        assert set(grade.distribution) == {"not_relevant", "relevant"}
        assert grade.probability == pytest.approx(grade.distribution["relevant"])
        assert grade.relevant == (grade.probability >= 0.5)
        assert grade.label == max(grade.distribution, key=grade.distribution.__getitem__)


def test_multiclass_grader_sums_the_relevant_labels(checkpoints: dict[str, Path]) -> None:
    """OSMoSIS: relevance is P(ADDR_DIRECT) + P(ADDR_PARTIAL); a custom mapping overrides."""
    path = str(checkpoints["modernbert-osmosis"])
    for grade in RelevanceGrader(model=path).grade(QUERY, TEXTS):
        d = grade.distribution
        assert grade.probability == pytest.approx(d["ADDR_DIRECT"] + d["ADDR_PARTIAL"])
        assert sum(d.values()) == pytest.approx(1.0)
    strict = RelevanceGrader(model=path, relevant_labels=("ADDR_DIRECT",)).grade(QUERY, TEXTS)
    assert all(g.probability == pytest.approx(g.distribution["ADDR_DIRECT"]) for g in strict)


def test_a_one_logit_reranker_grades_through_a_sigmoid(reranker_path: str) -> None:
    """Rerankers can grade: probability = sigmoid(logit), thresholded."""
    logits = Reranker(model=reranker_path).score(QUERY, TEXTS)
    threshold = sigmoid(sorted(logits)[2])
    grades = RelevanceGrader(model=reranker_path, threshold=threshold).grade(QUERY, TEXTS)
    assert [g.probability for g in grades] == pytest.approx([sigmoid(x) for x in logits])
    assert sum(g.relevant for g in grades) == 3
    assert {g.label for g in grades} <= {"relevant", "not_relevant"}


def test_grader_validates_its_settings(grader_path: str) -> None:
    """Thresholds outside [0, 1] and unknown labels fail with a clear message."""
    with pytest.raises(ValueError, match="threshold"):
        RelevanceGrader(model=grader_path, threshold=1.5)
    with pytest.raises(ValueError, match="subset"):
        RelevanceGrader(model=grader_path, relevant_labels=("yes",)).grade(QUERY, TEXTS)


# -- Highlighter ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "modernbert", "deberta-v2"])
def test_spans_are_exact_slices_of_unicode_text(checkpoints: dict[str, Path], arch: str) -> None:
    """For CJK, emoji, combining marks and fullwidth text, text[start:end] == span.text."""
    highlighter = EvidenceHighlighter(
        model=str(checkpoints[f"{arch}-token"]),
        threshold=0.3,
        min_span_chars=1,
        merge_gap_chars=0,
        return_sentence_scores=True,
    )
    results = highlighter.highlight(QUERY, UNICODE_TEXTS)
    assert any(r.spans for r in results)
    for result in results:
        for span in (*result.spans, *(result.sentences or ())):
            assert result.text[span.start : span.end] == span.text
        assert result.trimmed_text == highlighter.separator.join(s.text for s in result.spans)


def test_highlighter_windows_long_texts(highlighter_path: str) -> None:
    """Texts many times longer than max_length are read whole, in windows."""
    text = " ".join(TEXTS) * 20
    highlighter = EvidenceHighlighter(
        model=highlighter_path, max_length=64, doc_stride=16, min_span_chars=1
    )
    [result] = highlighter.highlight(QUERY, [text])
    assert result.num_windows > 10
    assert result.spans and result.spans[-1].end > len(text) // 2


def test_highlighter_thresholds_behave_monotonically(highlighter_path: str) -> None:
    """A higher threshold never yields more evidence characters."""

    def covered(threshold: float) -> int:
        h = EvidenceHighlighter(
            model=highlighter_path, threshold=threshold, min_span_chars=0, merge_gap_chars=0
        )
        return sum(s.end - s.start for s in h.highlight(QUERY, TEXTS[:2])[0].spans)

    assert covered(0.0) >= covered(0.4) >= covered(0.7) >= covered(1.0)


def test_window_pooling_only_matters_across_windows(highlighter_path: str) -> None:
    """'max' (the reference) and 'mean' agree on one-window texts; bad values are refused."""
    settings = {"threshold": 0.5, "min_span_chars": 1, "return_sentence_scores": True}
    exact = EvidenceHighlighter(model=highlighter_path, **settings)  # type: ignore[arg-type]
    averaged = EvidenceHighlighter(
        model=highlighter_path,
        window_pooling="mean",
        **settings,  # type: ignore[arg-type]
    )
    assert exact.window_pooling == "max"
    assert exact.highlight(QUERY, TEXTS) == averaged.highlight(QUERY, TEXTS)
    with pytest.raises(ValueError, match="window_pooling"):
        EvidenceHighlighter(model=highlighter_path, window_pooling="median")  # type: ignore[arg-type]


def test_default_window_is_the_models_limit_capped_like_the_reference(
    highlighter_path: str,
) -> None:
    """max_length=None reads windows of min(8192, the model's limit) tokens."""

    class SmallCap(EvidenceHighlighter):
        reference_max_length = 64

    text = " ".join(TEXTS) * 4
    uncapped = EvidenceHighlighter(model=highlighter_path).highlight(QUERY, [text])[0]
    capped = SmallCap(model=highlighter_path, doc_stride=16).highlight(QUERY, [text])[0]
    explicit = EvidenceHighlighter(model=highlighter_path, max_length=64, doc_stride=16)
    assert EvidenceHighlighter.reference_max_length == 8192
    assert uncapped.num_windows == 1 and capped.num_windows > 1
    assert capped == explicit.highlight(QUERY, [text])[0]


def test_highlighter_refuses_a_sequence_head(reranker_path: str) -> None:
    """A sequence classifier cannot produce spans."""
    with pytest.raises(IncompatibleModelError, match="token-classification"):
        EvidenceHighlighter(model=reranker_path).highlight(QUERY, TEXTS)


def test_async_highlight_and_grade_equal_sync(highlighter_path: str, grader_path: str) -> None:
    """The async verbs return exactly the sync results."""
    highlighter = EvidenceHighlighter(model=highlighter_path, return_sentence_scores=True)
    grader = RelevanceGrader(model=grader_path)

    async def both():  # type: ignore[no-untyped-def]
        return await asyncio.gather(
            highlighter.ahighlight(QUERY, TEXTS), grader.agrade(QUERY, TEXTS)
        )

    highlights, grades = asyncio.run(both())
    assert highlights == highlighter.highlight(QUERY, TEXTS)
    assert grades == grader.grade(QUERY, TEXTS)


# -- Pipeline -------------------------------------------------------------------------


def test_pipeline_accounts_for_every_input(
    reranker_path: str, grader_path: str, highlighter_path: str
) -> None:
    """Each input is kept or dropped with a reason; indices point into the caller's list."""
    pipeline = RerankGradeTrimPipeline(
        reranker=Reranker(model=reranker_path, top_n=4),
        grader=RelevanceGrader(model=grader_path, threshold=0.5),
        highlighter=EvidenceHighlighter(model=highlighter_path, min_span_chars=3),
        on_no_evidence="keep",
    )
    result = pipeline.run(QUERY, TEXTS)
    assert sorted([k.index for k in result.kept] + [d.index for d in result.dropped]) == list(
        range(len(TEXTS))
    )
    ranked = Reranker(model=reranker_path).rank(QUERY, TEXTS)
    assert [d.index for d in result.dropped if d.reason == "below_top_n"] == [ranked[-1].index]
    grades = RelevanceGrader(model=grader_path).grade(QUERY, TEXTS)
    for kept in result.kept:
        assert kept.text == TEXTS[kept.index]
        assert kept.grade is not None and kept.grade.index == kept.index
        assert kept.grade.probability == pytest.approx(grades[kept.index].probability)
        assert kept.highlight is not None and kept.highlight.index == kept.index
        expected = kept.highlight.trimmed_text if kept.highlight.spans else kept.text
        assert kept.output_text == expected
    for dropped in result.dropped:
        if dropped.reason == "not_relevant":
            assert dropped.grade is not None and not dropped.grade.relevant
    scores = [k.ranked.score for k in result.kept if k.ranked]
    assert scores == sorted(scores, reverse=True)
    assert asyncio.run(pipeline.arun(QUERY, TEXTS)) == result


def test_pipeline_can_drop_texts_without_evidence(highlighter_path: str) -> None:
    """on_no_evidence='drop' removes texts with no span, reporting 'no_evidence'."""
    strict = EvidenceHighlighter(model=highlighter_path, threshold=1.0)
    result = RerankGradeTrimPipeline(highlighter=strict, on_no_evidence="drop").run(QUERY, TEXTS)
    assert result.kept == ()
    assert {d.reason for d in result.dropped} == {"no_evidence"}
    kept = RerankGradeTrimPipeline(highlighter=strict).run(QUERY, TEXTS)
    assert [k.output_text for k in kept.kept] == TEXTS


def test_pipeline_reports_score_threshold_drops(reranker_path: str) -> None:
    """Texts under the reranker's score_threshold are dropped with that reason."""
    scores = sorted(Reranker(model=reranker_path).score(QUERY, TEXTS))
    pipeline = RerankGradeTrimPipeline(
        reranker=Reranker(model=reranker_path, score_threshold=scores[2])
    )
    result = pipeline.run(QUERY, TEXTS)
    assert len(result.kept) == 3
    assert [d.reason for d in result.dropped] == ["below_score_threshold"] * 2


# -- Laziness, sharing, bad input -----------------------------------------------------


def test_roles_load_nothing_until_used_and_share_one_model(tmp_path: Path) -> None:
    """Constructing roles is free; two roles on one model share one loaded engine."""
    path = str(save_tiny_checkpoint(tmp_path / "shared", seed=42))
    reranker = Reranker(model=path, top_n=2)
    grader = RelevanceGrader(model=EngineConfig(model=path))
    engine = get_engine(path)
    assert not engine.is_loaded
    reranker.rank(QUERY, TEXTS)
    grader.grade(QUERY, TEXTS)
    assert reranker.engine is grader.engine is engine
    assert engine.load_count == 1


def test_roles_are_frozen(reranker_path: str) -> None:
    """Role configuration cannot be changed after construction."""
    reranker = Reranker(model=reranker_path)
    with pytest.raises(AttributeError):
        reranker.top_n = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "verb",
    [
        lambda p: Reranker(model=p["bert-rerank"]).rank,
        lambda p: RelevanceGrader(model=p["bert-binary"]).grade,
        lambda p: EvidenceHighlighter(model=p["bert-token"]).highlight,
        lambda p: RerankGradeTrimPipeline(reranker=Reranker(model=p["bert-rerank"])).run,
    ],
    ids=["rank", "grade", "highlight", "pipeline"],
)
def test_bad_inputs_raise_clear_errors(checkpoints: dict[str, Path], verb) -> None:  # type: ignore[no-untyped-def]
    """None, non-strings, a bare string and blank queries raise TypeError/ValueError."""
    call = verb({k: str(v) for k, v in checkpoints.items()})
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, not NoneType"):
        call(QUERY, ["fine", None])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str, not int"):
        call(QUERY, [3])
    with pytest.raises(TypeError, match="single string"):
        call(QUERY, "one text, not a list")
    with pytest.raises(TypeError, match="not NoneType"):
        call(QUERY, None)
    with pytest.raises(TypeError, match="query must be a str"):
        call(None, TEXTS)
    with pytest.raises(ValueError, match="query is empty"):
        call("   ", TEXTS)


def test_empty_list_returns_empty_without_loading(tmp_path: Path) -> None:
    """No texts: empty results, and no role loads its model."""
    sequence = str(save_tiny_checkpoint(tmp_path / "seq", seed=8))
    token = str(save_tiny_checkpoint(tmp_path / "tok", head="token", num_labels=2, seed=9))
    assert Reranker(model=sequence).rank(QUERY, []) == []
    assert RelevanceGrader(model=sequence).grade(QUERY, []) == []
    assert EvidenceHighlighter(model=token).highlight(QUERY, []) == []
    assert RerankGradeTrimPipeline(reranker=Reranker(model=sequence)).run(QUERY, []).kept == ()
    assert not get_engine(sequence).is_loaded and not get_engine(token).is_loaded


def test_blank_texts_are_scored_and_have_no_evidence(
    reranker_path: str, highlighter_path: str
) -> None:
    """Empty and whitespace-only texts are valid: a finite score and no spans."""
    blanks = ["", "   \n\t "]
    scores = Reranker(model=reranker_path).score(QUERY, blanks)
    assert all(math.isfinite(s) for s in scores)
    highlights = EvidenceHighlighter(model=highlighter_path, threshold=0.0).highlight(QUERY, blanks)
    assert all(h.spans == () and h.trimmed_text == "" for h in highlights)


def test_callers_inputs_are_not_mutated(
    reranker_path: str, grader_path: str, highlighter_path: str
) -> None:
    """The list passed in is unchanged after every verb."""
    texts = list(TEXTS)
    snapshot = copy.deepcopy(texts)
    RerankGradeTrimPipeline(
        reranker=Reranker(model=reranker_path, top_n=2),
        grader=RelevanceGrader(model=grader_path),
        highlighter=EvidenceHighlighter(model=highlighter_path),
    ).run(QUERY, texts)
    assert texts == snapshot


def test_iterables_of_strings_are_accepted(reranker_path: str) -> None:
    """A tuple or generator of strings works like a list."""
    reranker = Reranker(model=reranker_path)
    assert reranker.score(QUERY, tuple(TEXTS)) == reranker.score(QUERY, (t for t in TEXTS))
