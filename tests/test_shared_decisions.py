"""The decisions both adapters share, tested once, below the adapters (no framework here).

Each test names one decision that used to be written in both the LangChain and the
LlamaIndex adapter; it now lives in :mod:`crag_integrations.options`,
:mod:`crag_integrations.metadata`, :mod:`crag_integrations.pipeline` or
:mod:`crag_integrations.crag`, and the adapters only translate.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from crag_integrations import EngineConfig, Reranker, RerankGradeTrimPipeline
from crag_integrations.crag import CragEvaluator, KnowledgeRefiner
from crag_integrations.metadata import METADATA_SCHEMA, relevance_score, stage_metadata
from crag_integrations.options import (
    CragOptions,
    EvaluatorOptions,
    FilterOptions,
    RefinerOptions,
    RerankOptions,
    TrimOptions,
)
from crag_integrations.types import (
    DocumentEvaluation,
    DroppedText,
    Grade,
    Highlight,
    ProcessedText,
    RankedText,
    RefinedDocument,
    Span,
)

QUERY = "what causes rain?"
TEXTS = [
    "Rain forms when water vapour condenses into droplets. Drops grow heavy and fall.",
    "The Eiffel Tower is in Paris.",
    "",
]

RANKED = RankedText(index=0, text="t", score=2.0, probability=0.88, num_windows=1)
GRADE = Grade(
    index=0,
    text="t",
    label="relevant",
    probability=0.7,
    relevant=True,
    distribution={"not_relevant": 0.3, "relevant": 0.7},
    num_windows=2,
)
SPAN = Span(start=0, end=4, text="Rain", score=0.9)
HIGHLIGHT = Highlight(
    index=0, text="Rain x", spans=(SPAN,), trimmed_text="Rain", sentences=None, num_windows=1
)


# --- the metadata schema and which score wins -----------------------------------------


def test_the_rerank_probability_wins_then_the_grade_then_the_evaluation() -> None:
    """relevance_score: reranker over grader over evaluator; trimming alone judges nothing."""
    judged = DocumentEvaluation(score=0.4, action="ambiguous")
    both = ProcessedText(index=0, text="t", output_text="t", ranked=RANKED, grade=GRADE)
    assert relevance_score(both) == RANKED.probability
    assert relevance_score(ProcessedText(index=0, text="t", output_text="t", grade=GRADE)) == 0.7
    evaluated = ProcessedText(index=0, text="t", output_text="t", evaluation=judged)
    assert relevance_score(evaluated) == 0.4
    trimmed = ProcessedText(index=0, text="Rain x", output_text="Rain", highlight=HIGHLIGHT)
    assert relevance_score(trimmed) is None


def test_stage_metadata_is_exactly_what_each_stage_said() -> None:
    """Every key is from the schema; windows only for model stages; the drop reason only
    on dropped items; the action only when one was decided."""
    item = ProcessedText(
        index=3, text="Rain x", output_text="Rain", ranked=RANKED, grade=GRADE, highlight=HIGHLIGHT
    )
    assert stage_metadata(item, "correct") == {
        "crag_original_index": 3,
        "crag_rerank_logit": 2.0,
        "crag_rerank_probability": 0.88,
        "crag_label": "relevant",
        "crag_grade_probability": 0.7,
        "crag_probabilities": {"not_relevant": 0.3, "relevant": 0.7},
        "crag_spans": [{"start": 0, "end": 4, "text": "Rain", "score": 0.9}],
        "crag_trimmed": True,
        "crag_num_windows": {"rerank": 1, "grade": 2, "highlight": 1},
        "crag_action": "correct",
    }
    refined = RefinedDocument(index=1, text="a. b.", refined_text="", strips=(), num_strips=2)
    dropped = DroppedText(
        index=1,
        text="a. b.",
        reason="incorrect",
        evaluation=DocumentEvaluation(score=0.1, action="incorrect"),
        refined=refined,
    )
    assert stage_metadata(dropped) == {
        "crag_original_index": 1,
        "crag_strips": [],
        "crag_num_strips": 2,
        "crag_trimmed": False,
        "crag_evaluation_score": 0.1,
        "crag_document_action": "incorrect",
        "crag_drop_reason": "incorrect",
    }
    assert set(stage_metadata(item, "correct")) <= set(METADATA_SCHEMA)
    assert set(stage_metadata(dropped)) <= set(METADATA_SCHEMA)


def test_the_metadata_table_in_the_docs_is_the_schema() -> None:
    """docs/metadata.md lists exactly the schema's keys, with their types and meanings."""
    table = (Path(__file__).parent.parent / "docs" / "metadata.md").read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = {row.split("`")[1] for row in rows}
    assert documented == set(METADATA_SCHEMA) | {"relevance_score", "retrieval_score"}
    for key, spec in METADATA_SCHEMA.items():
        (row,) = [r for r in rows if r.startswith(f"| `{key}`")]
        assert f"| {spec.type} |" in row.replace("`", "")
        assert spec.meaning in row


# --- validation of the options, once for both adapters --------------------------------


def test_action_thresholds_are_both_or_neither_ordered_in_range_and_need_a_score() -> None:
    """The CRAG action thresholds' rules, and the composite's need for a stage."""
    rerank = RerankOptions(model="org/model")
    trim = TrimOptions(model="org/token-model")
    with pytest.raises(ValidationError, match="both action_upper and action_lower"):
        CragOptions(reranker=rerank, action_upper=0.6)
    with pytest.raises(ValidationError, match="must not exceed"):
        CragOptions(reranker=rerank, action_upper=0.2, action_lower=0.6)
    with pytest.raises(ValidationError):
        CragOptions(reranker=rerank, action_upper=1.5, action_lower=0.2)
    with pytest.raises(ValidationError, match="reranker or a relevance_filter"):
        CragOptions(trimmer=trim, action_upper=0.6, action_lower=0.2)
    with pytest.raises(ValidationError, match="at least one"):
        CragOptions()
    assert CragOptions(reranker=rerank, action_upper=0.6, action_lower=0.2).stage().decides_action


def test_engine_options_build_the_engine_config_and_refuse_a_conflict(tmp_path: Path) -> None:
    """model_name= is model=; device etc. go into the EngineConfig; with an EngineConfig
    model they must be set on it, not beside it."""
    options = RerankOptions(model_name="org/model", device="cpu", max_length=64)
    assert options.engine_config() == EngineConfig(model="org/model", device="cpu", max_length=64)
    config = EngineConfig(model=str(tmp_path), device="cpu")
    assert RerankOptions(model=config).engine_config() is config
    with pytest.raises(ValidationError, match="set device on it"):
        RerankOptions(model=config, device="cuda")


def test_edits_take_effect_because_the_stage_is_built_from_the_fields() -> None:
    """model_copy(update=...), model_validate and pickling all give options whose stage is
    what their fields say; no derived state can go stale."""
    options = RerankOptions(model="org/model", top_n=3)
    edited = options.model_copy(update={"top_n": 6})
    assert edited.top_n == 6
    assert edited.stage().reranker == Reranker(model=EngineConfig(model="org/model"), top_n=6)
    assert RerankOptions.model_validate({**options.model_dump(), "top_n": 1}).role.top_n == 1
    assert pickle.loads(pickle.dumps(edited)).stage() == edited.stage()


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        (RerankOptions, {"top_n": -1}),
        (FilterOptions, {"threshold": 1.5}),
        (TrimOptions, {"on_no_evidence": "maybe"}),
        (EvaluatorOptions, {"upper": 0.2, "lower": 0.6}),
        (EvaluatorOptions, {"upper": 0.592, "lower": -0.995}),
        (RefinerOptions, {"threshold": None}),
        (RefinerOptions, {"mode": "paragraphs"}),
    ],
)
def test_bad_settings_fail_at_construction(options: type, fields: dict[str, object]) -> None:
    """Every stage's own checks run when its options are built, not on the first call."""
    with pytest.raises(ValidationError):
        options(model="org/model", **fields)


# --- the stages' keep/drop decisions ---------------------------------------------------


def _band_thresholds(scores: tuple[float, ...]) -> tuple[float, float]:
    ordered = sorted(scores)
    return ordered[-1], ordered[1]  # the best is correct, the worst incorrect


def test_the_evaluator_drops_incorrect_documents_only_when_asked(
    checkpoints: dict[str, Path],
) -> None:
    """CragEvaluator.run keeps every text by default; drop_incorrect drops exactly the texts
    whose own band is incorrect, reason "incorrect"; the action and evaluation ride along."""
    path = str(checkpoints["bert-binary"])
    upper, lower = _band_thresholds(CragEvaluator(model=path).evaluate(QUERY, TEXTS).scores)
    keep = CragEvaluator(model=path, upper=upper, lower=lower).run(QUERY, TEXTS)
    drop = CragEvaluator(model=path, upper=upper, lower=lower, drop_incorrect=True).run(
        QUERY, TEXTS
    )
    assert keep.evaluation is not None
    bands = keep.evaluation.document_actions
    assert "incorrect" in bands and "correct" in bands
    assert [k.index for k in keep.kept] == [0, 1, 2] and keep.dropped == ()
    assert [k.index for k in drop.kept] == [i for i, b in enumerate(bands) if b != "incorrect"]
    assert [d.index for d in drop.dropped] == [i for i, b in enumerate(bands) if b == "incorrect"]
    assert {d.reason for d in drop.dropped} == {"incorrect"}
    assert keep.action == drop.action == keep.evaluation.action == "correct"
    for item in keep.kept:
        assert item.evaluation is not None
        assert item.output_text == item.text
        assert item.evaluation.score == keep.evaluation.scores[item.index]


def test_the_refiner_falls_back_to_the_text_or_drops_it_when_nothing_survives(
    checkpoints: dict[str, Path],
) -> None:
    """KnowledgeRefiner.run: kept strips become the output; a text with none keeps its
    own text ("keep") or is dropped as no_evidence ("drop")."""
    path = str(checkpoints["bert-rerank"])
    probe = KnowledgeRefiner(model=path, threshold=0.0).refine(QUERY, TEXTS)
    threshold = max(s.score for s in probe[0].strips)  # only the best strip survives
    keep = KnowledgeRefiner(model=path, threshold=threshold).run(QUERY, TEXTS)
    drop = KnowledgeRefiner(model=path, threshold=threshold, on_no_evidence="drop").run(
        QUERY, TEXTS
    )
    outputs = {item.index: item.output_text for item in keep.kept}
    assert len(keep.kept) == 3 and keep.dropped == ()
    for item in keep.kept:
        assert item.refined is not None
        expected = item.refined.refined_text if item.refined.strips else item.text
        assert outputs[item.index] == expected
    assert outputs[2] == ""  # an empty text has no strip and stays as it was
    survivors = {i.index for i in keep.kept if i.refined is not None and i.refined.strips}
    assert {i.index for i in drop.kept} == survivors
    assert {d.index for d in drop.dropped} == {0, 1, 2} - survivors
    assert {d.reason for d in drop.dropped} == {"no_evidence"}


def test_the_pipeline_decides_the_action_on_the_scores_it_computed(
    checkpoints: dict[str, Path],
) -> None:
    """With action thresholds the pipeline's result carries the action (even when nothing
    is kept); without them, none."""
    reranker = Reranker(model=str(checkpoints["bert-rerank"]), top_n=0)
    plain = RerankGradeTrimPipeline(reranker=reranker).run(QUERY, TEXTS)
    assert plain.action is None and plain.kept == ()
    decided = RerankGradeTrimPipeline(reranker=reranker, action_upper=0.0, action_lower=0.0)
    assert decided.run(QUERY, TEXTS).action == "correct"
    never = RerankGradeTrimPipeline(reranker=reranker, action_upper=1.0, action_lower=1.0)
    assert never.run(QUERY, TEXTS).action == "incorrect"


def test_scored_texts_are_read_by_the_relevance_stages_and_spans_by_the_highlighter(
    checkpoints: dict[str, Path],
) -> None:
    """scored_texts replace what the reranker reads; kept texts and outputs stay the
    caller's texts; a length mismatch is refused."""
    reranker = Reranker(model=str(checkpoints["bert-rerank"]))
    pipeline = RerankGradeTrimPipeline(reranker=reranker)
    scored = [f"source: doc{i}\n\n{t}" for i, t in enumerate(TEXTS)]
    result = pipeline.run(QUERY, TEXTS, scored_texts=scored)
    expected = reranker.rank(QUERY, scored)
    assert [k.index for k in result.kept] == [r.index for r in expected]
    assert [k.output_text for k in result.kept] == [TEXTS[r.index] for r in expected]
    with pytest.raises(ValueError, match="one each"):
        pipeline.run(QUERY, TEXTS, scored_texts=scored[:1])


def test_action_scores_are_in_input_order_whatever_the_stages_kept() -> None:
    """The scores an action is decided on come in input order (kept in rerank order and
    dropped items interleave by index), graded items only when a grader ran."""
    from crag_integrations.pipeline import action_scores
    from crag_integrations.types import PipelineResult

    def ranked(index: int, probability: float) -> RankedText:
        return RankedText(index=index, text="t", score=0.0, probability=probability, num_windows=1)

    kept = (
        ProcessedText(index=2, text="t", output_text="t", ranked=ranked(2, 0.9)),
        ProcessedText(index=0, text="t", output_text="t", ranked=ranked(0, 0.7)),
    )
    dropped = (DroppedText(index=1, text="t", reason="below_top_n", ranked=ranked(1, 0.1)),)
    assert action_scores(PipelineResult(kept=kept, dropped=dropped)) == [0.7, 0.1, 0.9]
    graded = (
        ProcessedText(index=1, text="t", output_text="t", ranked=ranked(1, 0.5), grade=GRADE),
    )
    assert action_scores(PipelineResult(kept=graded, dropped=dropped)) == [GRADE.probability]


def test_a_configured_grader_decides_the_action_even_when_it_saw_nothing(
    checkpoints: dict[str, Path],
) -> None:
    """With a grader, the action is decided on grades only: if the reranker's threshold
    drops every text, no grade exists and the action is "incorrect", never a decision on
    the reranker's probabilities against thresholds meant for the grader's."""
    from crag_integrations import RelevanceGrader

    reranker = Reranker(model=str(checkpoints["bert-rerank"]), score_threshold=1e9)
    grader = RelevanceGrader(model=str(checkpoints["bert-binary"]))
    pipeline = RerankGradeTrimPipeline(
        reranker=reranker, grader=grader, action_upper=0.0, action_lower=0.0
    )
    result = pipeline.run(QUERY, TEXTS)
    assert result.kept == () and {d.reason for d in result.dropped} == {"below_score_threshold"}
    assert pipeline.action_scores(result) == []
    assert result.action == "incorrect"
    without_grader = RerankGradeTrimPipeline(reranker=reranker, action_upper=0.0, action_lower=0.0)
    assert without_grader.run(QUERY, TEXTS).action == "correct"


def test_the_options_tables_in_the_docs_list_every_option() -> None:
    """docs/adapters.md lists each options class's fields (its own section) and the engine
    options (one table), with the pydantic default of each."""
    import re

    from crag_integrations import options

    text = (Path(__file__).parent.parent / "docs" / "adapters.md").read_text(encoding="utf-8")
    engine = set(options.EngineOptions.model_fields)
    sections = re.split(r"\n#### ", text)
    engine_rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", sections[0], flags=re.MULTILINE)
    assert {name for name, _ in engine_rows} >= engine
    for section in sections[1:]:
        match = re.search(r"\(`(\w+Options)`\)", section.splitlines()[0])
        assert match, section.splitlines()[0]
        cls = getattr(options, match.group(1))
        rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, flags=re.MULTILINE))
        own = set(cls.model_fields) - engine
        assert own <= set(rows), f"{cls.__name__}: {sorted(own - set(rows))} undocumented"
        for name in own:
            assert rows[name].strip() == f"`{cls.model_fields[name].default!r}`", name
