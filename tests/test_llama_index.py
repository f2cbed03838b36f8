"""The LlamaIndex node postprocessors, through real LlamaIndex objects and tiny models."""

from __future__ import annotations

import asyncio
import math
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from pydantic import ValidationError

from crag_integrations import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.crag import CragEvaluator, KnowledgeRefiner, decide_action
from crag_integrations.llama_index import (
    CragEvaluatorPostprocessor,
    CragPostprocessor,
    CrossEncoderRerank,
    EvidenceTrimmer,
    KnowledgeRefinerTrimmer,
    RelevanceFilter,
)
from crag_integrations.pipeline import action_scores

QUERY = "what causes rain?"
TEXTS = (
    # Padded so that evidence spans (which never start or end on whitespace) cannot start
    # at 0 or end at len(text): trimming must move start_char_idx and end_char_idx.
    "   Rain forms when water vapor in the atmosphere condenses into droplets. "
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.  ",
    "The capital of Japan is Tokyo, which is also its largest city. "
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "A reranker sorts retrieved chunks so that the most relevant ones come first.",
    "The mitochondria is the powerhouse of the cell and produces ATP.",
)
DOC_OFFSET = 1000


def make_nodes(texts: tuple[str, ...] = TEXTS) -> list[NodeWithScore]:
    """Retrieved nodes with document offsets, metadata, relationships and retrieval scores."""
    nodes = []
    for i, text in enumerate(texts):
        node = TextNode(
            id_=f"node-{i}",
            text=text,
            start_char_idx=DOC_OFFSET + 10 * i,
            end_char_idx=DOC_OFFSET + 10 * i + len(text),
            metadata={"file_name": f"doc{i}.txt"},
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc")},
        )
        nodes.append(NodeWithScore(node=node, score=0.9 - 0.1 * i))
    return nodes


#: What the relevance stages read of make_nodes(): the text with its embedding metadata,
#: as LlamaIndex's own SentenceTransformerRerank scores it.
SCORED = tuple(n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in make_nodes())


def split_threshold(grader_path: str) -> float:
    """A relevance threshold that the tiny grader's probabilities fall on both sides of."""
    grades = RelevanceGrader(model=grader_path).grade(QUERY, list(SCORED))
    return sorted(g.probability for g in grades)[len(grades) // 2]


def snapshot(nodes: list[NodeWithScore]) -> list[dict[str, Any]]:
    return [n.model_dump() for n in nodes]


@pytest.fixture
def index() -> VectorStoreIndex:
    """An in-memory vector index over TEXTS with an explicit mock embedder (no Settings)."""
    nodes = [n.node for n in make_nodes()]
    return VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))


@pytest.fixture(scope="module")
def trim(checkpoints: dict[str, Path]) -> dict[str, Any]:
    """EvidenceHighlighter options under which the tiny token model finds some, but not all,
    of TEXTS[0] to be evidence (random weights: the threshold is searched, not assumed).
    """
    model = str(checkpoints["bert-token"])
    for labels in (None, ("O",)):
        for step in range(1, 20):
            options = {
                "threshold": step / 20,
                "min_span_chars": 1,
                "merge_gap_chars": 0,
                "evidence_labels": labels,
            }
            found = EvidenceHighlighter(model=model, **options).highlight(QUERY, [TEXTS[0]])
            if found[0].spans and found[0].trimmed_text != TEXTS[0].strip():
                return options
    pytest.fail("no threshold makes the tiny token model find partial evidence in TEXTS[0]")


class Recorder(BaseEventHandler):
    """Collects every instrumentation event it is given."""

    events: list[BaseEvent] = []

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A real event handler on the root dispatcher, detached after the test."""
    root = get_dispatcher()
    handler = Recorder(events=[])
    root.add_event_handler(handler)
    try:
        yield handler
    finally:
        root.event_handlers = [h for h in root.event_handlers if h is not handler]


# -- import guard --------------------------------------------------------------------------

BLOCKER = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {target!r} or name.startswith({target!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Block())
import crag_integrations  # the core package must not need the framework
try:
    import crag_integrations.llama_index
except ImportError as error:
    print(type(error).__name__, "|", error)
"""


def run_blocked(target: str) -> str:
    code = textwrap.dedent(BLOCKER.format(target=target))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


def test_missing_llama_index_names_the_extra() -> None:
    """Without llama-index-core, the import fails with the pip command for the extra."""
    out = run_blocked("llama_index")
    assert out.startswith("ImportError |")
    assert 'pip install "crag-integrations[llama-index]"' in out


def test_other_missing_modules_are_not_disguised_as_the_extra() -> None:
    """A module missing *inside* llama_index.core surfaces as itself, not as the extra."""
    out = run_blocked("llama_index.core.postprocessor")
    assert out.startswith("ModuleNotFoundError |")
    assert "llama_index.core.postprocessor" in out
    assert "crag-integrations[llama-index]" not in out


# -- reranker -----------------------------------------------------------------------------


def test_rerank_scores_are_probabilities_in_rank_order(reranker_path: str) -> None:
    """Nodes come back sorted by the role's rank, cut to top_n, scored sigmoid(logit)."""
    nodes = make_nodes()
    out = CrossEncoderRerank(model=reranker_path, top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    expected = Reranker(model=reranker_path, top_n=2).rank(QUERY, list(SCORED))
    assert [n.node_id for n in out] == [f"node-{r.index}" for r in expected]
    for node, ranked in zip(out, expected, strict=True):
        assert node.score == pytest.approx(ranked.probability)
        assert 0.0 <= node.score <= 1.0
        assert node.metadata["crag_rerank_logit"] == pytest.approx(ranked.score)
        assert node.metadata["retrieval_score"] == pytest.approx(0.9 - 0.1 * ranked.index)
        assert node.metadata["file_name"] == f"doc{ranked.index}.txt"
        assert node.node.relationships[NodeRelationship.SOURCE].node_id == "doc"
        assert node.text == TEXTS[ranked.index]


def test_rerank_threshold_applies_before_the_cut(reranker_path: str) -> None:
    """Nodes below score_threshold are dropped first, then the list is cut to top_n."""
    logits = Reranker(model=reranker_path).score(QUERY, list(SCORED))
    threshold = sorted(logits)[1]  # exactly one text is below it
    rerank = CrossEncoderRerank(model=reranker_path, top_n=2, score_threshold=threshold)
    processed = rerank.process(make_nodes(), query_str=QUERY)
    assert len(processed.kept) == 2
    reasons = {d.node.node_id: d.reason for d in processed.dropped}
    lowest = f"node-{logits.index(min(logits))}"
    assert reasons[lowest] == "below_score_threshold"
    assert sorted(reasons.values()) == ["below_score_threshold", "below_top_n"]
    assert all(d.node.metadata["crag_drop_reason"] == d.reason for d in processed.dropped)


# -- filter -------------------------------------------------------------------------------


def test_filter_keeps_relevant_nodes_in_input_order(grader_path: str) -> None:
    """Kept nodes are those the grader calls relevant, scored by relevance probability."""
    threshold = split_threshold(grader_path)
    grades = RelevanceGrader(model=grader_path, threshold=threshold).grade(QUERY, list(SCORED))
    relevant = [g for g in grades if g.relevant]
    assert 0 < len(relevant) < len(TEXTS), "premise: the threshold splits the texts"
    out = RelevanceFilter(model=grader_path, threshold=threshold).postprocess_nodes(
        make_nodes(), query_str=QUERY
    )
    assert [n.node_id for n in out] == [f"node-{g.index}" for g in relevant]
    for node, grade in zip(out, relevant, strict=True):
        assert node.score == pytest.approx(grade.probability)
        assert node.metadata["crag_label"] == grade.label
        assert node.metadata["crag_grade_probability"] == pytest.approx(grade.probability)
        assert node.metadata["crag_num_windows"] == {"grade": 1}
        assert node.metadata["crag_original_index"] == grade.index
        assert node.metadata["crag_probabilities"] == pytest.approx(dict(grade.distribution))
        assert node.metadata["retrieval_score"] == pytest.approx(0.9 - 0.1 * grade.index)


# -- trimmer ------------------------------------------------------------------------------


def test_trim_settings_find_partial_evidence(highlighter_path: str, trim: dict[str, Any]) -> None:
    """Premise of the trimming tests: TEXTS[0] has evidence that is not the whole text."""
    found = EvidenceHighlighter(model=highlighter_path, **trim).highlight(QUERY, list(TEXTS))
    assert found[0].spans
    assert found[0].spans[0].start > 0
    assert found[0].spans[-1].end < len(TEXTS[0])
    assert found[0].trimmed_text != TEXTS[0].strip()


def test_trimmed_nodes_carry_evidence_and_document_offsets(
    highlighter_path: str, trim: dict[str, Any]
) -> None:
    """Trimmed copies hold the evidence text, span offsets and shifted char indices."""
    nodes = make_nodes()
    out = EvidenceTrimmer(model=highlighter_path, **trim).postprocess_nodes(nodes, query_str=QUERY)
    found = EvidenceHighlighter(model=highlighter_path, **trim).highlight(QUERY, list(TEXTS))
    assert [n.node_id for n in out] == [n.node_id for n in nodes]
    for node, source, highlight in zip(out, nodes, found, strict=True):
        assert node.score == source.score
        spans = node.metadata["crag_spans"]
        assert spans == [
            {"start": s.start, "end": s.end, "text": s.text, "score": pytest.approx(s.score)}
            for s in highlight.spans
        ]
        assert node.metadata["crag_trimmed"] == bool(highlight.spans)
        if highlight.spans:
            assert node.text == highlight.trimmed_text
            for span in spans:
                assert source.text[span["start"] : span["end"]] in node.text
            assert node.node.start_char_idx == source.node.start_char_idx + spans[0]["start"]
            assert node.node.end_char_idx == source.node.start_char_idx + spans[-1]["end"]
        else:
            assert node.text == source.text
            assert node.node.start_char_idx == source.node.start_char_idx
            assert node.node.end_char_idx == source.node.end_char_idx


def test_trimmer_can_drop_nodes_without_evidence(
    highlighter_path: str, trim: dict[str, Any]
) -> None:
    """on_no_evidence='drop' removes nodes in which nothing was found, with the reason."""
    trimmer = EvidenceTrimmer(model=highlighter_path, on_no_evidence="drop", **trim)
    processed = trimmer.process(make_nodes((*TEXTS, "")), query_str=QUERY)
    assert "node-4" in {d.node.node_id for d in processed.dropped}
    assert {d.reason for d in processed.dropped} == {"no_evidence"}
    assert all(n.metadata["crag_spans"] for n in processed.kept)


# -- composite ----------------------------------------------------------------------------


def test_crag_postprocessor_chains_the_stages(
    reranker_path: str, grader_path: str, highlighter_path: str, trim: dict[str, Any]
) -> None:
    """The composite equals the pipeline's result, translated; nothing disappears."""
    crag = CragPostprocessor(
        reranker=CrossEncoderRerank(model=reranker_path, top_n=3),
        relevance_filter=RelevanceFilter(model=grader_path, threshold=0.3),
        trimmer=EvidenceTrimmer(model=highlighter_path, **trim),
    )
    processed = crag.process(make_nodes(), query_str=QUERY)
    result = crag.pipeline.run(QUERY, list(TEXTS), scored_texts=list(SCORED))
    assert processed.result == result
    assert [n.node_id for n in processed.kept] == [f"node-{k.index}" for k in result.kept]
    assert [n.text for n in processed.kept] == [k.output_text for k in result.kept]
    for node, item in zip(processed.kept, result.kept, strict=True):
        assert item.ranked is not None
        assert node.score == pytest.approx(item.ranked.probability)
        assert {"crag_rerank_logit", "crag_label", "crag_spans"} <= node.metadata.keys()
    ids = [n.node_id for n in processed.kept] + [d.node.node_id for d in processed.dropped]
    assert sorted(ids) == sorted(n.node_id for n in make_nodes())


def test_crag_postprocessor_needs_a_stage() -> None:
    """A composite with no model would be a silent no-op, so it refuses to exist."""
    with pytest.raises(ValueError, match="at least one"):
        CragPostprocessor()


def test_chained_postprocessors_keep_the_retrievers_score(
    reranker_path: str, highlighter_path: str, trim: dict[str, Any]
) -> None:
    """retrieval_score survives a chain: a later stage never overwrites it."""
    nodes = make_nodes()
    reranked = CrossEncoderRerank(model=reranker_path, top_n=None).postprocess_nodes(
        nodes, query_str=QUERY
    )
    trimmed = EvidenceTrimmer(model=highlighter_path, **trim).postprocess_nodes(
        reranked, query_str=QUERY
    )
    by_id = {n.node_id: n for n in nodes}
    for node in trimmed:
        assert node.metadata["retrieval_score"] == by_id[node.node_id].score
        assert "crag_rerank_logit" in node.metadata and "crag_spans" in node.metadata


# -- LlamaIndex flows ---------------------------------------------------------------------


def test_query_engine_sync_and_async_source_nodes(
    index: VectorStoreIndex, reranker_path: str, highlighter_path: str, trim: dict[str, Any]
) -> None:
    """query() and aquery() hand the synthesizer our scored, trimmed nodes."""
    rerank = CrossEncoderRerank(model=reranker_path, top_n=3)
    trimmer = EvidenceTrimmer(model=highlighter_path, **trim)
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=len(TEXTS), node_postprocessors=[rerank, trimmer]
    )
    expected = Reranker(model=reranker_path, top_n=3).rank(QUERY, list(SCORED))
    highlights = EvidenceHighlighter(model=highlighter_path, **trim).highlight(
        QUERY, [TEXTS[r.index] for r in expected]
    )
    for response in (engine.query(QUERY), asyncio.run(engine.aquery(QUERY))):
        sources = response.source_nodes
        assert [n.node_id for n in sources] == [f"node-{r.index}" for r in expected]
        assert [n.score for n in sources] == pytest.approx([r.probability for r in expected])
        for node, highlight in zip(sources, highlights, strict=True):
            assert node.text == (highlight.trimmed_text if highlight.spans else highlight.text)


def test_retriever_only_flow(index: VectorStoreIndex, grader_path: str) -> None:
    """A bare retriever's output can be filtered without a query engine."""
    retrieved = index.as_retriever(similarity_top_k=len(TEXTS)).retrieve(QUERY)
    before = snapshot(retrieved)
    threshold = split_threshold(grader_path)
    out = RelevanceFilter(model=grader_path, threshold=threshold).postprocess_nodes(
        retrieved, query_bundle=QueryBundle(QUERY)
    )
    grader = RelevanceGrader(model=grader_path, threshold=threshold)
    grades = {f"node-{g.index}": g for g in grader.grade(QUERY, list(SCORED))}
    assert {n.node_id for n in out} == {i for i, g in grades.items() if g.relevant}
    assert snapshot(retrieved) == before
    by_id = {n.node_id: n for n in retrieved}
    for node in out:
        assert node.metadata["retrieval_score"] == by_id[node.node_id].score


# -- edge cases and contracts -------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["rerank", "filter", "trim", "crag", "crag-action", "evaluator", "refiner"]
)
def test_inputs_are_never_mutated(
    kind: str, reranker_path: str, grader_path: str, highlighter_path: str, trim: dict[str, Any]
) -> None:
    """Every postprocessor returns new objects and leaves the caller's nodes as they were."""
    post = {
        "rerank": lambda: CrossEncoderRerank(model=reranker_path, top_n=2),
        "filter": lambda: RelevanceFilter(model=grader_path, threshold=0.0),
        "trim": lambda: EvidenceTrimmer(model=highlighter_path, **trim),
        "crag": lambda: CragPostprocessor(
            reranker=CrossEncoderRerank(model=reranker_path),
            trimmer=EvidenceTrimmer(model=highlighter_path),
        ),
        "crag-action": lambda: CragPostprocessor(
            reranker=CrossEncoderRerank(model=reranker_path), action_upper=0.6, action_lower=0.2
        ),
        "evaluator": lambda: CragEvaluatorPostprocessor(model=grader_path),
        "refiner": lambda: KnowledgeRefinerTrimmer(model=grader_path, threshold=0.0),
    }[kind]()
    nodes = make_nodes()
    before = snapshot(nodes)
    out = post.postprocess_nodes(nodes, query_str=QUERY)
    out += asyncio.run(post.apostprocess_nodes(nodes, query_str=QUERY))
    assert snapshot(nodes) == before
    originals = {id(n) for n in nodes} | {id(n.node) for n in nodes}
    assert out
    assert not any(id(n) in originals or id(n.node) in originals for n in out)
    for node in out:
        node.node.metadata["scribble"] = 1  # copies are deep: writing to them is harmless
        node.node.relationships[NodeRelationship.SOURCE].metadata["scribble"] = 1
    assert snapshot(nodes) == before


def test_written_keys_stay_out_of_prompts_and_embeddings(reranker_path: str) -> None:
    """crag_* keys and retrieval_score are excluded from the LLM and embedding text."""
    out = CrossEncoderRerank(model=reranker_path).postprocess_nodes(make_nodes(), query_str=QUERY)
    node = out[0].node
    for mode in (MetadataMode.LLM, MetadataMode.EMBED):
        content = node.get_content(metadata_mode=mode)
        assert "file_name" in content
        assert "crag_" not in content and "retrieval_score" not in content


def test_empty_node_list(reranker_path: str) -> None:
    """No nodes in, no nodes out, sync and async."""
    rerank = CrossEncoderRerank(model=reranker_path)
    assert rerank.postprocess_nodes([], query_str=QUERY) == []
    assert asyncio.run(rerank.apostprocess_nodes([], query_str=QUERY)) == []


def test_nodes_with_empty_text(
    reranker_path: str, highlighter_path: str, trim: dict[str, Any]
) -> None:
    """Empty texts are scored like any text and never contain evidence."""
    nodes = make_nodes(("", TEXTS[0], "   "))
    ranked = CrossEncoderRerank(model=reranker_path, top_n=None).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert sorted(n.node_id for n in ranked) == ["node-0", "node-1", "node-2"]
    trimmed = EvidenceTrimmer(model=highlighter_path, **trim).process(nodes, query_str=QUERY)
    by_id = {n.node_id: n for n in trimmed.kept}
    assert by_id["node-0"].text == "" and by_id["node-0"].metadata["crag_spans"] == []
    assert by_id["node-2"].text == "   " and by_id["node-2"].metadata["crag_spans"] == []


def test_missing_or_blank_query_is_a_clear_error(reranker_path: str) -> None:
    """No query (or a blank one) raises ValueError telling how to pass it."""
    rerank = CrossEncoderRerank(model=reranker_path)
    with pytest.raises(ValueError, match="query_str"):
        rerank.postprocess_nodes(make_nodes())
    with pytest.raises(ValueError, match="query_str"):
        asyncio.run(rerank.apostprocess_nodes(make_nodes()))
    with pytest.raises(ValueError, match="empty"):
        rerank.postprocess_nodes(make_nodes(), query_str="  ")


def test_async_awaits_the_engine_without_a_worker_thread(reranker_path: str) -> None:
    """Once loaded, apostprocess_nodes runs with no executor (no thread per call)."""
    rerank = CrossEncoderRerank(model=reranker_path)
    expected = rerank.postprocess_nodes(make_nodes(), query_str=QUERY)  # loads the model

    class NoThreads(ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a worker thread was requested")

    async def main() -> list[NodeWithScore]:
        asyncio.get_running_loop().set_default_executor(NoThreads())
        return await rerank.apostprocess_nodes(make_nodes(), query_str=QUERY)

    out = asyncio.run(main())
    assert [(n.node_id, n.score) for n in out] == [(n.node_id, n.score) for n in expected]


def test_config_is_frozen_and_strict(reranker_path: str) -> None:
    """Config fields cannot change after construction, and unknown options are refused."""
    rerank = CrossEncoderRerank(model=reranker_path)
    with pytest.raises(ValidationError):
        rerank.top_n = 1
    with pytest.raises(ValidationError):
        CrossEncoderRerank(model=reranker_path, topn=1)  # type: ignore[call-arg]
    rerank.callback_manager = CallbackManager([])  # query engines assign this one


@pytest.mark.parametrize("kind", ["rerank", "filter", "trim", "crag", "crag-action"])
def test_serialisation_round_trips_reattach_the_pipeline(
    kind: str, reranker_path: str, grader_path: str, highlighter_path: str, trim: dict[str, Any]
) -> None:
    """to_dict/from_dict, to_json/from_json and pickle rebuild an equal live pipeline."""
    cls, kwargs = {
        "rerank": (CrossEncoderRerank, {"model": reranker_path, "score_threshold": -5.0}),
        "filter": (RelevanceFilter, {"model": grader_path, "relevant_labels": ("relevant",)}),
        "trim": (EvidenceTrimmer, {"model": highlighter_path, **trim}),
        "crag": (
            CragPostprocessor,
            {"reranker": CrossEncoderRerank(model=reranker_path, top_n=None)},
        ),
        "crag-action": (
            CragPostprocessor,
            {
                "relevance_filter": RelevanceFilter(model=grader_path),
                "action_upper": 0.7,
                "action_lower": 0.3,
            },
        ),
    }[kind]
    post = cls(**kwargs)
    data = post.to_dict()
    assert data["class_name"] == cls.class_name() != "BaseNodePostprocessor"
    copies = [
        cls.from_dict(data),
        cls.from_json(post.to_json()),
        pickle.loads(pickle.dumps(post)),
    ]
    expected = post.postprocess_nodes(make_nodes(), query_str=QUERY)
    for copy in copies:
        assert type(copy) is cls
        assert copy.pipeline == post.pipeline
        out = copy.postprocess_nodes(make_nodes(), query_str=QUERY)
        assert [n.model_dump() for n in out] == [n.model_dump() for n in expected]


# -- events -------------------------------------------------------------------------------


def test_instrumentation_events_reach_a_root_handler(
    reranker_path: str, recorder: Recorder
) -> None:
    """ReRankStartEvent/ReRankEndEvent are dispatched, sync and async, with our nodes."""
    rerank = CrossEncoderRerank(model=reranker_path, top_n=2)
    nodes = make_nodes()
    out = rerank.postprocess_nodes(nodes, query_str=QUERY)
    aout = asyncio.run(rerank.apostprocess_nodes(nodes, query_str=QUERY))
    starts = [e for e in recorder.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in recorder.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == len(ends) == 2
    assert starts[0].top_n == 2
    assert starts[0].model_name == rerank.role.engine_config.model
    assert isinstance(starts[0].query, QueryBundle) and starts[0].query.query_str == QUERY
    assert [n.node_id for n in starts[0].nodes] == [n.node_id for n in nodes]
    assert [n.node_id for n in ends[0].nodes] == [n.node_id for n in out]
    assert [n.node_id for n in ends[1].nodes] == [n.node_id for n in aout]


def test_callback_manager_sees_a_reranking_event(grader_path: str) -> None:
    """The legacy CBEventType.RERANKING event carries the query, input and output nodes."""
    debug = LlamaDebugHandler()
    keep = RelevanceFilter(model=grader_path, callback_manager=CallbackManager([debug]))
    out = keep.postprocess_nodes(make_nodes(), query_str=QUERY)
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    start, end = pairs[0]
    assert start.payload is not None and end.payload is not None
    assert start.payload[EventPayload.QUERY_STR] == QUERY
    assert len(start.payload[EventPayload.NODES]) == len(TEXTS)
    assert end.payload[EventPayload.NODES] == out


def test_construction_loads_nothing_and_validates_through_the_role() -> None:
    """Constructing never touches the model; invalid options fail with the role's message."""
    post = CragPostprocessor(
        reranker=CrossEncoderRerank(model="org/model-that-does-not-exist", top_n=2)
    )
    assert post.pipeline.reranker is not None
    assert post.pipeline.reranker.top_n == 2
    with pytest.raises(ValueError, match="top_n must be >= 0"):
        CrossEncoderRerank(model="org/model-that-does-not-exist", top_n=-1)


# -- CRAG action and knowledge refinement -------------------------------------------------

# (model key, scale, relevant_labels) of the evaluators the action tests run on.
EVALUATORS = {
    "binary": ("bert-binary", "probability", None),
    "rerank-logit": ("bert-rerank", "logit", None),
    "osmosis": ("bert-osmosis", "probability", ("ADDR_DIRECT", "ADDR_PARTIAL")),
}


def action_thresholds(
    scores: list[float], action: str, ceiling: float = 1.0
) -> tuple[float, float]:
    """(upper, lower), chosen from the actual scores, under which ``action`` is decided.

    correct: the best score reaches upper. ambiguous: none does, and only the worst
    falls below lower (so every band occurs except correct). incorrect: all fall below.
    ``ceiling`` is the largest allowed threshold (``inf`` on the logit scale).
    """
    ordered = sorted(scores)
    above = ordered[-1] + min(1e-3, (ceiling - ordered[-1]) / 2)
    return {
        "correct": (ordered[-1], ordered[0]),
        "ambiguous": (above, ordered[1]),
        "incorrect": (above, above),
    }[action]


def evaluator_options(checkpoints: dict[str, Path], which: str, action: str) -> dict[str, Any]:
    key, scale, labels = EVALUATORS[which]
    options: dict[str, Any] = {
        "model": str(checkpoints[key]),
        "scale": scale,
        "relevant_labels": labels,
    }
    ceiling = math.inf if scale == "logit" else 1.0
    free = CragEvaluator(**options, upper=min(ceiling, 1e9), lower=-1e9 if ceiling > 1 else 0.0)
    scores = list(free.evaluate(QUERY, list(SCORED)).scores)
    upper, lower = action_thresholds(scores, action, ceiling)
    return {**options, "upper": upper, "lower": lower}


@pytest.mark.parametrize("action", ["correct", "ambiguous", "incorrect"])
@pytest.mark.parametrize("which", list(EVALUATORS))
def test_evaluator_writes_the_evaluators_action(
    which: str, action: str, checkpoints: dict[str, Path]
) -> None:
    """Each copy carries CragEvaluator's action, its own band and its score, in input order."""
    options = evaluator_options(checkpoints, which, action)
    expected = CragEvaluator(**options).evaluate(QUERY, list(SCORED))
    assert expected.action == action, "premise: the thresholds select this action"
    post = CragEvaluatorPostprocessor(**options)
    nodes = make_nodes()
    out = post.postprocess_nodes(nodes, query_str=QUERY)
    assert post.evaluate(nodes, query_str=QUERY) == expected
    assert [n.node_id for n in out] == [n.node_id for n in nodes]
    for i, (node, source) in enumerate(zip(out, nodes, strict=True)):
        assert node.metadata["crag_action"] == action
        assert node.metadata["crag_document_action"] == expected.document_actions[i]
        assert node.metadata["crag_original_index"] == i
        assert node.score == pytest.approx(expected.scores[i])
        assert node.metadata["retrieval_score"] == source.score
        assert node.text == source.text


def test_evaluator_can_drop_incorrect(checkpoints: dict[str, Path]) -> None:
    """drop_incorrect removes exactly the nodes whose own band is incorrect."""
    options = evaluator_options(checkpoints, "binary", "ambiguous")
    bands = CragEvaluator(**options).evaluate(QUERY, list(SCORED)).document_actions
    assert "incorrect" in bands and set(bands) != {"incorrect"}, "premise: mixed bands"
    post = CragEvaluatorPostprocessor(**options, drop_incorrect=True)
    processed = post.process(make_nodes(), query_str=QUERY)
    assert processed.action == "ambiguous"
    assert [n.node_id for n in processed.kept] == [
        f"node-{i}" for i, band in enumerate(bands) if band != "incorrect"
    ]
    assert [d.node.node_id for d in processed.dropped] == [
        f"node-{i}" for i, band in enumerate(bands) if band == "incorrect"
    ]
    assert {d.reason for d in processed.dropped} == {"incorrect"}
    assert all(d.node.metadata["crag_drop_reason"] == "incorrect" for d in processed.dropped)
    kept_by_default = CragEvaluatorPostprocessor(**options).postprocess_nodes(
        make_nodes(), query_str=QUERY
    )
    assert len(kept_by_default) == len(TEXTS)


def test_evaluator_without_nodes_says_incorrect(grader_path: str) -> None:
    """No nodes: the direct API (sync and async) and process() report 'incorrect'."""
    post = CragEvaluatorPostprocessor(model=grader_path)
    for verdict in (
        post.evaluate([], query_str=QUERY),
        asyncio.run(post.aevaluate([], query_bundle=QueryBundle(QUERY))),
        post.process([], query_str=QUERY).evaluation,
    ):
        assert verdict.action == "incorrect"
        assert verdict.scores == () and verdict.document_actions == ()
    assert post.postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(ValueError, match="query_str"):
        post.evaluate(make_nodes())


def test_evaluator_sync_equals_async(checkpoints: dict[str, Path]) -> None:
    """aprocess/aevaluate give exactly what process/evaluate give."""
    post = CragEvaluatorPostprocessor(**evaluator_options(checkpoints, "osmosis", "ambiguous"))
    sync, asynchronous = (
        post.process(make_nodes(), query_str=QUERY),
        asyncio.run(post.aprocess(make_nodes(), query_str=QUERY)),
    )
    assert asynchronous.evaluation == sync.evaluation
    assert snapshot(asynchronous.kept) == snapshot(sync.kept)
    assert asyncio.run(post.aevaluate(make_nodes(), query_str=QUERY)) == sync.evaluation


@pytest.mark.parametrize("action", ["correct", "ambiguous", "incorrect"])
def test_crag_postprocessor_decides_the_action(
    action: str, reranker_path: str, grader_path: str
) -> None:
    """The action is decide_action over the pipeline's action scores, on result and nodes."""
    stages = {
        "reranker": CrossEncoderRerank(model=reranker_path, top_n=3),
        "relevance_filter": RelevanceFilter(model=grader_path),
    }
    probe = CragPostprocessor(**stages)
    scores = action_scores(probe.pipeline.run(QUERY, list(TEXTS), scored_texts=list(SCORED)))
    upper, lower = action_thresholds(scores, action)
    crag = CragPostprocessor(
        reranker=stages["reranker"],
        relevance_filter=RelevanceFilter(model=grader_path, threshold=sorted(scores)[1]),
        action_upper=upper,
        action_lower=lower,
    )
    processed = crag.process(make_nodes(), query_str=QUERY)
    assert processed.action == decide_action(scores, upper=upper, lower=lower) == action
    assert processed.kept and processed.dropped, "premise: some nodes kept, some dropped"
    for node in [*processed.kept, *(d.node for d in processed.dropped)]:
        assert node.metadata["crag_action"] == action
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            assert "crag_action" not in node.node.get_content(metadata_mode=mode)
    again = asyncio.run(crag.aprocess(make_nodes(), query_str=QUERY))
    assert again.action == action and snapshot(again.kept) == snapshot(processed.kept)


def test_crag_postprocessor_without_thresholds_decides_no_action(grader_path: str) -> None:
    """Without action thresholds, no action is decided and no crag_action key is written."""
    processed = CragPostprocessor(
        relevance_filter=RelevanceFilter(model=grader_path, threshold=0.0)
    ).process(make_nodes(), query_str=QUERY)
    assert processed.action is None
    assert processed.kept and all("crag_action" not in n.metadata for n in processed.kept)


def test_crag_action_thresholds_are_validated(grader_path: str, highlighter_path: str) -> None:
    """Both thresholds or neither, lower <= upper, in [0, 1], and a stage that scores."""
    grade = RelevanceFilter(model=grader_path)
    trim = EvidenceTrimmer(model=highlighter_path)
    with pytest.raises(ValueError, match="both"):
        CragPostprocessor(relevance_filter=grade, action_upper=0.6)
    with pytest.raises(ValueError, match="must not exceed"):
        CragPostprocessor(relevance_filter=grade, action_upper=0.2, action_lower=0.6)
    with pytest.raises(ValidationError):
        CragPostprocessor(relevance_filter=grade, action_upper=1.5, action_lower=0.2)
    with pytest.raises(ValueError, match="CragEvaluatorPostprocessor"):
        CragPostprocessor(trimmer=trim, action_upper=0.6, action_lower=0.2)


def refiner_threshold(grader_path: str) -> float:
    """A strip threshold, found from the actual scores, under which about half of TEXTS
    keep at least one strip and the others keep none."""
    free = KnowledgeRefiner(model=grader_path, threshold=0.0).refine(QUERY, list(TEXTS))
    best = sorted(max(s.score for s in d.strips) for d in free)
    return best[len(best) // 2]


def test_refiner_keeps_strips_with_original_offsets(grader_path: str) -> None:
    """Copies hold the refined text; crag_strips point into the original text; char
    indices move to the first and last kept characters; scores are unchanged."""
    threshold = refiner_threshold(grader_path)
    expected = KnowledgeRefiner(model=grader_path, threshold=threshold).refine(QUERY, list(TEXTS))
    assert any(d.strips for d in expected) and not all(d.strips for d in expected), "premise"
    nodes = make_nodes()
    out = KnowledgeRefinerTrimmer(model=grader_path, threshold=threshold).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert [n.node_id for n in out] == [n.node_id for n in nodes]
    for node, source, refined in zip(out, nodes, expected, strict=True):
        strips = node.metadata["crag_strips"]
        assert node.score == source.score
        assert node.metadata["crag_num_strips"] == refined.num_strips > 0
        assert node.metadata["crag_trimmed"] == bool(strips)
        assert [s["text"] for s in strips] == [s.text for s in refined.strips]
        for strip in strips:
            assert source.text[strip["start"] : strip["end"]] == strip["text"]
        if strips:
            assert node.text == refined.refined_text
            assert node.node.start_char_idx == source.node.start_char_idx + strips[0]["start"]
            assert node.node.end_char_idx == source.node.start_char_idx + strips[-1]["end"]
        else:
            assert node.text == source.text
            assert node.node.start_char_idx == source.node.start_char_idx
            assert node.node.end_char_idx == source.node.end_char_idx


def test_refiner_keeps_or_drops_nodes_without_kept_strips(grader_path: str) -> None:
    """on_no_evidence: 'keep' returns such nodes whole, 'drop' reports them as no_evidence."""
    threshold = refiner_threshold(grader_path)
    nodes = make_nodes((*TEXTS, ""))
    kept = KnowledgeRefinerTrimmer(model=grader_path, threshold=threshold).process(
        nodes, query_str=QUERY
    )
    assert len(kept.kept) == len(nodes) and kept.dropped == []
    empty = kept.kept[-1]
    assert empty.text == "" and empty.metadata["crag_strips"] == []
    assert empty.metadata["crag_num_strips"] == 0
    dropping = KnowledgeRefinerTrimmer(
        model=grader_path, threshold=threshold, on_no_evidence="drop"
    )
    processed = dropping.process(nodes, query_str=QUERY)
    without = [f"node-{d.index}" for d in kept.refined if not d.strips]
    assert "node-4" in without
    assert [d.node.node_id for d in processed.dropped] == without
    assert {d.reason for d in processed.dropped} == {"no_evidence"}
    assert all(n.metadata["crag_strips"] for n in processed.kept)
    again = asyncio.run(dropping.aprocess(nodes, query_str=QUERY))
    assert snapshot(again.kept) == snapshot(processed.kept)
    assert [d.node.node_id for d in again.dropped] == without


@pytest.mark.parametrize("kind", ["evaluator", "refiner"])
def test_crag_classes_round_trip(kind: str, grader_path: str, recorder: Recorder) -> None:
    """to_dict/from_dict, to_json/from_json and pickle re-attach an equal live evaluator or
    refiner; each call sends the ReRank start/end events."""
    post: CragEvaluatorPostprocessor | KnowledgeRefinerTrimmer
    if kind == "evaluator":
        post = CragEvaluatorPostprocessor(
            model=grader_path, upper=0.9, lower=0.1, drop_incorrect=True
        )
    else:
        post = KnowledgeRefinerTrimmer(
            model=grader_path, mode="words", window_words=4, top_k=3, on_no_evidence="drop"
        )
    data = post.to_dict()
    assert data["class_name"] == post.class_name() != "BaseNodePostprocessor"
    copies = [
        type(post).from_dict(data),
        type(post).from_json(post.to_json()),
        pickle.loads(pickle.dumps(post)),
    ]
    expected = post.postprocess_nodes(make_nodes(), query_str=QUERY)
    for copy in copies:
        assert type(copy) is type(post)
        if isinstance(post, CragEvaluatorPostprocessor):
            assert isinstance(copy, CragEvaluatorPostprocessor)
            assert copy.evaluator == post.evaluator
        else:
            assert isinstance(copy, KnowledgeRefinerTrimmer)
            assert copy.refiner == post.refiner
        out = copy.postprocess_nodes(make_nodes(), query_str=QUERY)
        assert snapshot(out) == snapshot(expected)
    starts = [e for e in recorder.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in recorder.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == len(ends) == 1 + len(copies)
    assert starts[0].model_name == grader_path and starts[0].top_n == len(TEXTS)
    assert [n.node_id for n in ends[0].nodes] == [n.node_id for n in expected]


def test_query_engine_branches_on_the_action(index: VectorStoreIndex, grader_path: str) -> None:
    """In a query engine, evaluator then refiner: every source node carries the action
    (for branching) and its kept strips; none of it reaches the prompt."""
    evaluator = CragEvaluatorPostprocessor(model=grader_path)
    refiner = KnowledgeRefinerTrimmer(model=grader_path, threshold=0.0)
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=len(TEXTS), node_postprocessors=[evaluator, refiner]
    )
    expected = evaluator.evaluate(make_nodes(), query_str=QUERY).action
    for response in (engine.query(QUERY), asyncio.run(engine.aquery(QUERY))):
        sources = response.source_nodes
        assert sorted(n.node_id for n in sources) == sorted(n.node_id for n in make_nodes())
        assert {n.metadata["crag_action"] for n in sources} == {expected}
        for node in sources:
            assert node.metadata["crag_strips"]
            assert node.text == " ".join(s["text"] for s in node.metadata["crag_strips"])
            prompt = node.node.get_content(metadata_mode=MetadataMode.LLM)
            assert "crag_" not in prompt and "file_name" in prompt


def test_llama_index_public_api_is_pinned() -> None:
    """The adapter module's __all__ is exactly this list (changing it is deliberate)."""
    import crag_integrations.llama_index as li

    assert sorted(li.__all__) == [
        "CragEvaluatedNodes",
        "CragEvaluatorPostprocessor",
        "CragNodes",
        "CragPostprocessor",
        "CrossEncoderRerank",
        "DroppedNode",
        "EvidenceTrimmer",
        "KnowledgeRefinerTrimmer",
        "METADATA_KEYS",
        "NodeDropReason",
        "RefinedNodes",
        "RelevanceFilter",
    ]
    for name in li.__all__:
        assert hasattr(li, name), name


def test_edited_copies_behave_as_their_fields_say(reranker_path: str) -> None:
    """model_copy(update=...), model_validate and from_dict give postprocessors that do what
    their fields say (nothing derived from the old fields can go stale)."""
    two = CrossEncoderRerank(model=reranker_path)
    assert two.top_n == 2  # SentenceTransformerRerank's default
    four = two.model_copy(update={"top_n": 4})
    assert four.top_n == 4
    assert len(two.postprocess_nodes(make_nodes(), query_str=QUERY)) == 2
    assert len(four.postprocess_nodes(make_nodes(), query_str=QUERY)) == 4
    three = CrossEncoderRerank.model_validate({**two.model_dump(), "top_n": 3})
    assert len(three.postprocess_nodes(make_nodes(), query_str=QUERY)) == 3
    assert CrossEncoderRerank.from_dict(four.to_dict()).top_n == 4
    crag = CragPostprocessor(reranker=two).model_copy(update={"reranker": four})
    assert len(crag.postprocess_nodes(make_nodes(), query_str=QUERY)) == 4
