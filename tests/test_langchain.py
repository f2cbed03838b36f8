"""LangChain adapters on real LangChain objects and tiny random checkpoints (offline)."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import (
    CrossEncoderReranker,
    DocumentCompressorPipeline,
)
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_text_splitters import RecursiveCharacterTextSplitter
from pydantic import ValidationError

import crag_integrations.langchain as lc
from crag_integrations import EngineConfig, get_engine
from crag_integrations.crag import CragEvaluator, KnowledgeRefiner, decide_action
from crag_integrations.langchain import (
    COMPRESSION_EVENT,
    CragCompression,
    CragCompressor,
    CragCrossEncoder,
    CragEvaluatorCompressor,
    CrossEncoderRerank,
    EvidenceTrimmer,
    KnowledgeRefinerTrimmer,
    RelevanceFilter,
)
from crag_integrations.pipeline import action_scores

QUERY = "what causes rain?"
TEXTS = (
    "Rain forms when water vapor in the atmosphere condenses into droplets.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "The capital of Japan is Tokyo, which is also its largest city.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "A reranker sorts retrieved chunks so that the most relevant ones come first.",
    "",
)


def _documents() -> list[Document]:
    return [
        Document(
            page_content=text,
            metadata={"source": f"doc-{i}", "tags": ["a", "b"], "nested": {"n": i}},
            id=f"id-{i}",
        )
        for i, text in enumerate(TEXTS)
    ]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


Compressor = (
    CrossEncoderRerank
    | RelevanceFilter
    | EvidenceTrimmer
    | CragCompressor
    | CragEvaluatorCompressor
    | KnowledgeRefinerTrimmer
)
Builder = Callable[[dict[str, Path]], Compressor]


def _median_grade(checkpoints: dict[str, Path]) -> float:
    """The tiny grader's median relevance probability on TEXTS: a threshold that keeps
    about half of them whatever random weights this session's checkpoint drew (the tiny
    tokenizer, hence the weights, can differ between processes)."""
    grader = RelevanceFilter(model=str(checkpoints["bert-binary"])).role
    return _median([g.probability for g in grader.grade(QUERY, TEXTS)])


# The composites' grader threshold is the median over all TEXTS: at least 3 of the 6 (and
# of any 5 retrieved, at least 2) reach it, so at least one of the reranker's top 4 does.
BUILDERS: dict[str, Builder] = {
    "rerank": lambda c: CrossEncoderRerank(model=str(c["bert-rerank"]), top_n=3),
    "filter": lambda c: RelevanceFilter(model=str(c["bert-binary"]), threshold=_median_grade(c)),
    "trim": lambda c: EvidenceTrimmer(model=str(c["bert-token"]), threshold=0.4),
    "crag": lambda c: CragCompressor(
        reranker=CrossEncoderRerank(model=str(c["bert-rerank"]), top_n=4),
        relevance_filter=RelevanceFilter(model=str(c["bert-binary"]), threshold=_median_grade(c)),
        trimmer=EvidenceTrimmer(model=str(c["bert-token"]), on_no_evidence="drop"),
    ),
    "crag-action": lambda c: CragCompressor(
        reranker=CrossEncoderRerank(model=str(c["bert-rerank"]), top_n=4),
        relevance_filter=RelevanceFilter(model=str(c["bert-binary"]), threshold=_median_grade(c)),
        action_upper=0.6,
        action_lower=0.2,
    ),
    "evaluate": lambda c: CragEvaluatorCompressor(model=str(c["bert-osmosis"]), upper=0.4),
    "refine": lambda c: KnowledgeRefinerTrimmer(
        model=str(c["bert-rerank"]), threshold=None, top_k=2, on_no_evidence="drop"
    ),
}


def _core(compressor: Compressor) -> object:
    """The model-free core object a compressor translates for (equal configs, equal cores)."""
    if isinstance(compressor, CragEvaluatorCompressor):
        return compressor.evaluator
    if isinstance(compressor, KnowledgeRefinerTrimmer):
        return compressor.refiner
    return compressor.pipeline


class _Recorder(BaseCallbackHandler):
    """A real sync callback handler that records custom events and retriever runs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, UUID]] = []
        self.retriever_runs: list[UUID] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data, run_id))

    def on_retriever_start(
        self, serialized: Any, query: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self.retriever_runs.append(run_id)


class _AsyncRecorder(AsyncCallbackHandler):
    """A real async callback handler that records custom events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    async def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.events.append((name, data))


def _retriever(compressor: BaseDocumentCompressor, k: int = 5) -> ContextualCompressionRetriever:
    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=16))
    store.add_documents(_documents())
    return ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=store.as_retriever(search_kwargs={"k": k})
    )


# --- import guard ---------------------------------------------------------------------


def test_import_without_langchain_core_names_the_extra() -> None:
    """Without langchain-core the module raises ImportError with the pip extra; the
    package itself still imports and does not pull in langchain."""
    script = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "langchain_core" or name.startswith("langchain_core."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None
        sys.meta_path.insert(0, Block())
        import crag_integrations
        assert not any(m.startswith("langchain") for m in sys.modules), "leaked"
        try:
            import crag_integrations.langchain
        except ImportError as exc:
            assert type(exc) is ImportError, type(exc)
            print(exc)
        else:
            raise SystemExit("imported without langchain_core")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install -U "crag-integrations[langchain]"' in done.stdout
    assert "langchain-core is not installed" in done.stdout


# --- real LangChain retrievers and pipelines ------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_contextual_compression_retriever_sync_and_async_agree(
    name: str, checkpoints: dict[str, Path]
) -> None:
    """Each compressor works inside ContextualCompressionRetriever; invoke and ainvoke
    return identical documents, equal to compressing the retrieved documents directly."""
    compressor = BUILDERS[name](checkpoints)
    retriever = _retriever(compressor)
    retrieved = retriever.base_retriever.invoke(QUERY)
    assert len(retrieved) == 5
    sync_docs = retriever.invoke(QUERY)
    async_docs = asyncio.run(retriever.ainvoke(QUERY))
    assert sync_docs  # every configuration keeps something from these five
    assert sync_docs == async_docs
    assert sync_docs == list(compressor.compress_documents(retrieved, QUERY))
    by_id = {d.id: d for d in retrieved}
    for doc in sync_docs:
        original = by_id[doc.id]
        assert doc.metadata["source"] == original.metadata["source"]
        assert retrieved[doc.metadata["crag_original_index"]].id == doc.id


def test_text_splitter_then_our_compressors_in_document_compressor_pipeline(
    checkpoints: dict[str, Path],
) -> None:
    """A DocumentCompressorPipeline splits, reranks, then trims; spans point into the
    chunk each trimmed document came from, and ids/metadata survive every step."""
    splitter = RecursiveCharacterTextSplitter(chunk_size=40, chunk_overlap=0)
    rerank = CrossEncoderRerank(model=str(checkpoints["bert-rerank"]), top_n=4)
    trim = EvidenceTrimmer(model=str(checkpoints["bert-token"]), threshold=0.3, min_span_chars=1)
    pipeline = DocumentCompressorPipeline(transformers=[splitter, rerank, trim])
    documents = _documents()[:3]
    out = pipeline.compress_documents(documents, QUERY)
    assert out == asyncio.run(pipeline.acompress_documents(documents, QUERY))

    chunks = splitter.split_documents(documents)
    assert len(chunks) > len(documents)
    reranked = rerank.compress_documents(chunks, QUERY)
    assert [d.page_content for d in reranked] == [
        chunks[r.index].page_content
        for r in rerank.role.rank(QUERY, [c.page_content for c in chunks])
    ]
    assert len(out) == 4
    for doc in out:
        source = reranked[doc.metadata["crag_original_index"]]
        assert doc.metadata["source"] == source.metadata["source"]
        assert doc.metadata["relevance_score"] == source.metadata["relevance_score"]
        for span in doc.metadata["crag_spans"]:
            assert source.page_content[span["start"] : span["end"]] == span["text"]


def test_lcel_chain_over_the_retriever(checkpoints: dict[str, Path]) -> None:
    """The retriever composes in an LCEL chain; the prompt holds exactly the kept texts."""
    compressor = BUILDERS["rerank"](checkpoints)
    retriever = _retriever(compressor)

    def join(docs: list[Document]) -> str:
        return "\n".join(d.page_content for d in docs)

    def prompt_for(x: dict[str, str]) -> str:
        return f"Q: {x['question']}\nC:\n{x['context']}"

    chain = {
        "context": retriever | RunnableLambda(join),
        "question": RunnablePassthrough(),
    } | RunnableLambda(prompt_for)
    prompt = chain.invoke(QUERY)
    kept = retriever.invoke(QUERY)
    assert prompt == f"Q: {QUERY}\nC:\n" + "\n".join(d.page_content for d in kept)
    assert len(kept) == 3


# --- documents in, documents out ------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_inputs_are_never_mutated_and_outputs_share_no_metadata(
    name: str, checkpoints: dict[str, Path]
) -> None:
    """Sync and async calls leave the caller's documents exactly as they were, and the
    output metadata is a deep copy (editing it cannot reach the input)."""
    compressor = BUILDERS[name](checkpoints)
    documents = _documents()
    snapshot = copy.deepcopy(documents)
    out = compressor.compress_documents(documents, QUERY)
    aout = asyncio.run(compressor.acompress_documents(documents, QUERY))
    assert documents == snapshot
    assert [d.metadata for d in documents] == [d.metadata for d in snapshot]
    assert out == aout
    assert out
    for doc in out:
        original = documents[doc.metadata["crag_original_index"]]
        assert doc is not original
        assert doc.id == original.id
        assert doc.metadata["nested"] is not original.metadata["nested"]
        doc.metadata["nested"]["n"] = -1
    assert documents == snapshot


def test_rerank_metadata_matches_the_reranker_role(checkpoints: dict[str, Path]) -> None:
    """relevance_score is sigmoid(logit) in [0, 1], crag_rerank_logit the role's logit;
    the threshold applies before the top_n cut, and only those rules drop documents."""
    path = str(checkpoints["bert-rerank"])
    documents = _documents()
    scored = CrossEncoderRerank(model=path).role.score_texts(QUERY, TEXTS)
    threshold = _median([r.score for r in scored])
    compressor = CrossEncoderRerank(model=path, top_n=2, score_threshold=threshold)
    out = compressor.compress_documents(documents, QUERY)
    expected = sorted(
        (r for r in scored if r.score >= threshold), key=lambda r: r.score, reverse=True
    )[:2]
    assert [d.metadata["crag_original_index"] for d in out] == [r.index for r in expected]
    for doc, ranked in zip(out, expected, strict=True):
        assert doc.page_content == TEXTS[ranked.index]
        assert doc.metadata["relevance_score"] == ranked.probability
        assert 0.0 <= doc.metadata["relevance_score"] <= 1.0
        assert doc.metadata["crag_rerank_logit"] == ranked.score
        assert doc.metadata["crag_num_windows"] == {"rerank": 1}
    everything = CrossEncoderRerank(model=path, top_n=None).compress_documents(documents, QUERY)
    assert sorted(str(d.id) for d in everything) == sorted(str(d.id) for d in documents)


def test_long_documents_report_their_window_count(checkpoints: dict[str, Path]) -> None:
    """A document longer than one window is scored in several; the count is reported."""
    config = EngineConfig(model=str(checkpoints["bert-rerank"]), max_length=16, stride=4)
    compressor = CrossEncoderRerank(model=config, top_n=None)
    long_text = " ".join(TEXTS)
    (doc,) = compressor.compress_documents([Document(page_content=long_text)], QUERY)
    (ranked,) = compressor.role.score_texts(QUERY, [long_text])
    assert ranked.num_windows > 1
    assert doc.metadata["crag_num_windows"] == {"rerank": ranked.num_windows}
    assert doc.metadata["crag_rerank_logit"] == ranked.score


def test_filter_metadata_matches_the_grader_role(checkpoints: dict[str, Path]) -> None:
    """The filter keeps input order, drops exactly the documents graded not relevant,
    and writes the grade's probability, label and distribution."""
    path = str(checkpoints["bert-binary"])
    probe = RelevanceFilter(model=path).role.grade(QUERY, TEXTS)
    threshold = _median([g.probability for g in probe])
    compressor = RelevanceFilter(model=path, threshold=threshold)
    grades = compressor.role.grade(QUERY, TEXTS)
    out = compressor.compress_documents(_documents(), QUERY)
    kept = [g for g in grades if g.relevant]
    assert 0 < len(kept) < len(TEXTS)
    assert [d.metadata["crag_original_index"] for d in out] == [g.index for g in kept]
    for doc, grade in zip(out, kept, strict=True):
        assert doc.page_content == TEXTS[grade.index]
        assert doc.metadata["relevance_score"] == grade.probability
        assert doc.metadata["crag_grade_probability"] == grade.probability
        assert doc.metadata["crag_label"] == grade.label
        assert doc.metadata["crag_probabilities"] == dict(grade.distribution)
        assert set(doc.metadata["crag_probabilities"]) == {"not_relevant", "relevant"}


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_trimmer_replaces_content_by_evidence_with_original_offsets(
    policy: str, checkpoints: dict[str, Path]
) -> None:
    """page_content becomes the joined spans; spans index the original text; documents
    without evidence (the empty one always) are kept whole or dropped by policy."""
    compressor = EvidenceTrimmer(
        model=str(checkpoints["bert-token"]),
        threshold=0.5,
        min_span_chars=1,
        on_no_evidence=policy,  # type: ignore[arg-type]
    )
    highlights = compressor.role.highlight(QUERY, TEXTS)
    out = compressor.compress_documents(_documents(), QUERY)
    with_evidence = {h.index for h in highlights if h.spans}
    assert 5 not in with_evidence
    assert with_evidence
    expected = sorted(with_evidence) if policy == "drop" else list(range(len(TEXTS)))
    assert [d.metadata["crag_original_index"] for d in out] == expected
    assert "relevance_score" not in out[0].metadata
    for doc in out:
        highlight = highlights[doc.metadata["crag_original_index"]]
        original = TEXTS[highlight.index]
        assert doc.metadata["crag_spans"] == [
            {"start": s.start, "end": s.end, "text": s.text, "score": s.score}
            for s in highlight.spans
        ]
        for span in doc.metadata["crag_spans"]:
            assert original[span["start"] : span["end"]] == span["text"]
        assert doc.metadata["crag_trimmed"] is bool(highlight.spans)
        assert doc.page_content == (highlight.trimmed_text if highlight.spans else original)


def test_crag_compressor_equals_the_pipeline_it_translates(checkpoints: dict[str, Path]) -> None:
    """The composite runs rerank -> filter -> trim once; kept documents and their
    metadata are the pipeline's result, relevance_score being the reranker's."""
    compressor = BUILDERS["crag"](checkpoints)
    assert isinstance(compressor, CragCompressor)
    result = compressor.pipeline.run(QUERY, TEXTS)
    out = compressor.compress_documents(_documents(), QUERY)
    assert len(out) + len(result.dropped) == len(TEXTS)
    assert out
    assert {d.reason for d in result.dropped} >= {"below_top_n"}
    assert [d.metadata["crag_original_index"] for d in out] == [k.index for k in result.kept]
    for doc, item in zip(out, result.kept, strict=True):
        assert item.ranked is not None
        assert item.grade is not None
        assert doc.page_content == item.output_text
        assert doc.metadata["relevance_score"] == item.ranked.probability
        assert doc.metadata["crag_grade_probability"] == item.grade.probability
        assert set(doc.metadata["crag_num_windows"]) == {"rerank", "grade", "highlight"}


def test_empty_retrieval_returns_nothing_and_loads_nothing(checkpoints: dict[str, Path]) -> None:
    """An empty document list returns [] (sync and async) without loading a model, and
    the event still reports zero counts."""
    compressor = CrossEncoderRerank(
        model=EngineConfig(model=str(checkpoints["deberta-v2-rerank"]), device="cpu")
    )
    recorder = _Recorder()
    assert compressor.compress_documents([], QUERY, callbacks=[recorder]) == []
    assert asyncio.run(compressor.acompress_documents([], QUERY)) == []
    assert not compressor.role.engine.is_loaded
    assert recorder.events[0][1]["documents_in"] == 0


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_config_round_trips_and_is_frozen(name: str, checkpoints: dict[str, Path]) -> None:
    """model_dump() rebuilds an equal compressor; unknown fields and assignment fail."""
    compressor = BUILDERS[name](checkpoints)
    rebuilt = type(compressor)(**compressor.model_dump())
    assert rebuilt == compressor
    assert _core(rebuilt) == _core(compressor)
    with pytest.raises(ValidationError, match="unknown"):
        type(compressor)(**{**compressor.model_dump(), "unknown": 1})
    first_field = next(iter(type(compressor).model_fields))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(compressor, first_field, None)


def test_engine_config_model_round_trips(checkpoints: dict[str, Path]) -> None:
    """An EngineConfig model dumps to a dict and validates back to the same config."""
    config = EngineConfig(model=str(checkpoints["bert-rerank"]), device="cpu", max_length=64)
    compressor = CrossEncoderRerank(model=config, top_n=None, score_threshold=-1.0)
    rebuilt = CrossEncoderRerank(**compressor.model_dump())
    assert rebuilt == compressor
    assert rebuilt.model == config


def test_bad_settings_fail_at_construction(checkpoints: dict[str, Path]) -> None:
    """Invalid values and an empty composite fail loudly when built, not on first call."""
    with pytest.raises(ValidationError):
        CrossEncoderRerank(model=str(checkpoints["bert-rerank"]), top_n=-1)
    with pytest.raises(ValidationError):
        RelevanceFilter(model=str(checkpoints["bert-binary"]), threshold=1.5)
    with pytest.raises(ValidationError):
        EvidenceTrimmer(model=str(checkpoints["bert-token"]), on_no_evidence="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        CragCompressor()


def test_compressors_naming_one_model_share_one_loaded_model(
    checkpoints: dict[str, Path],
) -> None:
    """Two compressors and the cross-encoder naming the same model use the same engine,
    loaded once."""
    path = str(checkpoints["modernbert-rerank"])
    first = CrossEncoderRerank(model=path, top_n=1)
    second = CragCompressor(reranker=CrossEncoderRerank(model=path, top_n=2))
    encoder = CragCrossEncoder(model=path)
    first.compress_documents(_documents(), QUERY)
    second.compress_documents(_documents(), QUERY)
    encoder.score([(QUERY, "rain")])
    engine = get_engine(path)
    assert first.role.engine is engine
    assert encoder.role.engine is engine
    assert engine.load_count == 1


# --- callbacks ------------------------------------------------------------------------


def test_custom_event_reaches_handlers_through_the_retriever(
    checkpoints: dict[str, Path],
) -> None:
    """One custom event per call, attached to the retriever's run, with counts and timing."""
    recorder = _Recorder()
    retriever = _retriever(BUILDERS["rerank"](checkpoints))
    out = retriever.invoke(QUERY, config={"callbacks": [recorder]})
    assert len(recorder.events) == 1
    name, data, run_id = recorder.events[0]
    assert name == COMPRESSION_EVENT
    assert run_id == recorder.retriever_runs[0]
    assert data["compressor"] == "CrossEncoderRerank"
    assert (data["documents_in"], data["documents_out"], data["documents_dropped"]) == (
        5,
        len(out),
        5 - len(out),
    )
    assert data["dropped_by_reason"] == {"below_top_n": 2}
    assert data["elapsed_s"] >= 0.0


def test_custom_event_outside_and_inside_a_runnable(checkpoints: dict[str, Path]) -> None:
    """Callbacks passed directly work outside any run; inside a RunnableLambda with no
    callbacks argument the event goes to the ambient run's handlers; async handlers
    receive the event from acompress_documents."""
    compressor = BUILDERS["filter"](checkpoints)
    direct = _Recorder()
    first = compressor.compress_documents(_documents(), QUERY, callbacks=[direct])
    assert [e[0] for e in direct.events] == [COMPRESSION_EVENT]

    ambient = _Recorder()

    def inside(query: str) -> list[Document]:
        return list(compressor.compress_documents(_documents(), query))

    assert RunnableLambda(inside).invoke(QUERY, config={"callbacks": [ambient]}) == first
    assert [e[0] for e in ambient.events] == [COMPRESSION_EVENT]

    assert compressor.compress_documents(_documents(), QUERY) == first  # no handlers at all

    async_recorder = _AsyncRecorder()
    asyncio.run(compressor.acompress_documents(_documents(), QUERY, callbacks=[async_recorder]))
    assert async_recorder.events[0][1]["documents_in"] == len(TEXTS)


def test_custom_event_appears_in_astream_events(checkpoints: dict[str, Path]) -> None:
    """astream_events(version="v2") on the retriever yields our event with its data."""
    retriever = _retriever(BUILDERS["rerank"](checkpoints))

    async def collect() -> list[Any]:
        return [
            event
            async for event in retriever.astream_events(QUERY, version="v2")
            if event["event"] == "on_custom_event"
        ]

    (event,) = asyncio.run(collect())
    assert event["name"] == COMPRESSION_EVENT
    assert event["data"]["documents_out"] == 3


# --- BaseCrossEncoder -----------------------------------------------------------------


def test_cross_encoder_drives_langchains_own_reranker(checkpoints: dict[str, Path]) -> None:
    """CragCrossEncoder is a langchain_core BaseCrossEncoder; LangChain's
    CrossEncoderReranker with it orders documents as CrossEncoderRerank does, and its
    scores are the reranker's probabilities."""
    path = str(checkpoints["bert-rerank"])
    encoder = CragCrossEncoder(model=path)
    assert isinstance(encoder, BaseCrossEncoder)
    theirs = CrossEncoderReranker(model=encoder, top_n=3).compress_documents(_documents(), QUERY)
    ours = CrossEncoderRerank(model=path, top_n=3).compress_documents(_documents(), QUERY)
    assert [d.id for d in theirs] == [d.id for d in ours]
    assert encoder.score([(QUERY, d.page_content) for d in ours]) == [
        d.metadata["relevance_score"] for d in ours
    ]


def test_cross_encoder_keeps_pair_order_across_queries(checkpoints: dict[str, Path]) -> None:
    """Pairs with different queries come back in input order, sync and async alike, and
    a classifier scores its relevance probability."""
    encoder = CragCrossEncoder(model=str(checkpoints["bert-binary"]))
    pairs = [(QUERY, TEXTS[0]), ("where is Tokyo?", TEXTS[2]), (QUERY, TEXTS[1])]
    scores = encoder.score(pairs)
    assert scores == [encoder.score([p])[0] for p in pairs]
    assert scores == asyncio.run(encoder.ascore(pairs))
    grades = encoder.role.grade(QUERY, [TEXTS[0], TEXTS[1]])
    assert [scores[0], scores[2]] == [g.probability for g in grades]


def test_langchain_public_api_is_pinned() -> None:
    """The adapter module's __all__ is exactly this list (changing it is deliberate)."""
    assert sorted(lc.__all__) == [
        "COMPRESSION_EVENT",
        "CragCompression",
        "CragCompressor",
        "CragCrossEncoder",
        "CragEvaluatorCompressor",
        "CrossEncoderRerank",
        "EvidenceTrimmer",
        "KnowledgeRefinerTrimmer",
        "RelevanceFilter",
    ]
    for name in lc.__all__:
        assert hasattr(lc, name), name


# --- the CRAG action ------------------------------------------------------------------


def _three_actions(scores: Sequence[float]) -> dict[str, tuple[float, float]]:
    """(upper, lower) per action, picked from real scores so each action must come out."""
    top, bottom = max(scores), min(scores)
    assert bottom < top < 1.0
    above_all = (top + 1.0) / 2
    return {
        "correct": (top, bottom),
        "ambiguous": (above_all, bottom),
        "incorrect": (above_all, above_all),
    }


@pytest.mark.parametrize("model", ["bert-rerank", "bert-binary", "bert-osmosis"])
def test_evaluator_compressor_writes_the_evaluators_action_and_bands(
    model: str, checkpoints: dict[str, Path]
) -> None:
    """For a reranker, a binary and a multi-class grader, and thresholds giving each of the
    three actions, every output document carries the action and band that CragEvaluator
    computes on the same texts; the direct API returns the same evaluation; nothing is
    dropped or reordered by default; sync and async agree."""
    path = str(checkpoints[model])
    probe = CragEvaluator(model=path).evaluate(QUERY, TEXTS)
    seen = set()
    for expected_action, (upper, lower) in _three_actions(probe.scores).items():
        compressor = CragEvaluatorCompressor(model=path, upper=upper, lower=lower)
        expected = CragEvaluator(model=path, upper=upper, lower=lower).evaluate(QUERY, TEXTS)
        assert expected.action == expected_action
        documents = _documents()
        assert compressor.evaluate(QUERY, documents) == expected
        assert asyncio.run(compressor.aevaluate(QUERY, documents)) == expected
        out = compressor.compress_documents(documents, QUERY)
        assert out == asyncio.run(compressor.acompress_documents(documents, QUERY))
        assert [d.id for d in out] == [d.id for d in documents]
        for index, doc in enumerate(out):
            assert doc.page_content == documents[index].page_content
            assert doc.metadata["crag_original_index"] == index
            assert doc.metadata["crag_action"] == expected.action
            assert doc.metadata["crag_document_action"] == expected.document_actions[index]
            assert doc.metadata["relevance_score"] == expected.scores[index]
            assert doc.metadata["source"] == f"doc-{index}"
        seen.add(out[0].metadata["crag_action"])
    assert seen == {"correct", "ambiguous", "incorrect"}


def test_evaluator_compressor_drops_incorrect_documents_only_when_asked(
    checkpoints: dict[str, Path],
) -> None:
    """drop_incorrect removes exactly the documents whose own band is incorrect
    (keeping input order), the survivors still carry the query-level action, and the
    event reports the action and the drops."""
    path = str(checkpoints["bert-rerank"])
    scores = CragEvaluator(model=path).evaluate(QUERY, TEXTS).scores
    upper, lower = max(scores), _median(list(scores))
    expected = CragEvaluator(model=path, upper=upper, lower=lower).evaluate(QUERY, TEXTS)
    incorrect = [i for i, band in enumerate(expected.document_actions) if band == "incorrect"]
    assert 0 < len(incorrect) < len(TEXTS)
    compressor = CragEvaluatorCompressor(model=path, upper=upper, lower=lower, drop_incorrect=True)
    recorder = _Recorder()
    out = compressor.compress_documents(_documents(), QUERY, callbacks=[recorder])
    assert [d.metadata["crag_original_index"] for d in out] == [
        i for i in range(len(TEXTS)) if i not in incorrect
    ]
    assert {d.metadata["crag_action"] for d in out} == {"correct"}
    assert "incorrect" not in {d.metadata["crag_document_action"] for d in out}
    ((name, data, _run_id),) = recorder.events
    assert name == COMPRESSION_EVENT
    assert data["compressor"] == "CragEvaluatorCompressor"
    assert data["action"] == "correct"
    assert data["dropped_by_reason"] == {"incorrect": len(incorrect)}
    assert (data["documents_in"], data["documents_out"]) == (len(TEXTS), len(out))

    keep_all = CragEvaluatorCompressor(model=path, upper=upper, lower=lower)
    assert len(keep_all.compress_documents(_documents(), QUERY)) == len(TEXTS)


def test_no_documents_means_incorrect_and_nothing_scored(checkpoints: dict[str, Path]) -> None:
    """With no documents the direct APIs say "incorrect" (sync and async), compressing
    returns [], the event carries the action, and no model is loaded."""
    # A model no other test in this module loads, so "nothing loaded" is observable.
    config = EngineConfig(model=str(checkpoints["deberta-v2-osmosis"]), device="cpu")
    evaluator = CragEvaluatorCompressor(model=config)
    assert evaluator.evaluate(QUERY, []).action == "incorrect"
    assert asyncio.run(evaluator.aevaluate(QUERY, [])).scores == ()
    recorder = _Recorder()
    assert evaluator.compress_documents([], QUERY, callbacks=[recorder]) == []
    assert recorder.events[0][1]["action"] == "incorrect"

    crag = CragCompressor(
        relevance_filter=RelevanceFilter(model=config), action_upper=0.6, action_lower=0.2
    )
    empty = CragCompression(action="incorrect", documents=(), scores=())
    assert crag.evaluate_action(QUERY, []) == empty
    assert asyncio.run(crag.aevaluate_action(QUERY, [])) == empty
    assert crag.compress_documents([], QUERY) == []
    assert not evaluator.evaluator.role.engine.is_loaded


@pytest.mark.parametrize("with_grader", [True, False])
def test_crag_compressor_action_is_decided_on_the_pipelines_action_scores(
    with_grader: bool, checkpoints: dict[str, Path]
) -> None:
    """With action thresholds, crag_action on every output document, the event's action
    and evaluate_action() all equal decide_action(action_scores(result)) (grades when a
    grader runs, reranker probabilities otherwise); thresholds picked from those scores
    give each of the three actions; evaluate_action returns exactly compress_documents'
    documents, sync and async."""
    reranker = CrossEncoderRerank(model=str(checkpoints["bert-rerank"]), top_n=4)
    grader = RelevanceFilter(model=str(checkpoints["bert-binary"]), threshold=0.0)
    stages: dict[str, Any] = {
        "reranker": reranker,
        "relevance_filter": grader if with_grader else None,
    }
    result = CragCompressor(**stages).pipeline.run(QUERY, TEXTS)
    scores = action_scores(result)
    assert len(scores) == (4 if with_grader else len(TEXTS))
    seen = set()
    for expected_action, (upper, lower) in _three_actions(scores).items():
        assert decide_action(scores, upper=upper, lower=lower) == expected_action
        crag = CragCompressor(**stages, action_upper=upper, action_lower=lower)
        recorder = _Recorder()
        decided = crag.evaluate_action(QUERY, _documents(), callbacks=[recorder])
        assert decided.action == expected_action
        assert decided.scores == tuple(scores)
        assert asyncio.run(crag.aevaluate_action(QUERY, _documents())) == decided
        out = crag.compress_documents(_documents(), QUERY)
        assert list(decided.documents) == out
        assert len(out) == 4
        assert {d.metadata["crag_action"] for d in out} == {expected_action}
        assert recorder.events[0][1]["action"] == expected_action
        seen.add(decided.action)
    assert seen == {"correct", "ambiguous", "incorrect"}


def test_crag_compressor_without_thresholds_decides_no_action(
    checkpoints: dict[str, Path],
) -> None:
    """Without action thresholds no crag_action is written nor reported, and
    evaluate_action fails with a message saying what to set."""
    crag = BUILDERS["crag"](checkpoints)
    assert isinstance(crag, CragCompressor)
    recorder = _Recorder()
    out = crag.compress_documents(_documents(), QUERY, callbacks=[recorder])
    assert out
    assert all("crag_action" not in d.metadata for d in out)
    assert "action" not in recorder.events[0][1]
    with pytest.raises(ValueError, match="action_upper and action_lower"):
        crag.evaluate_action(QUERY, _documents())


def test_action_settings_fail_at_construction(checkpoints: dict[str, Path]) -> None:
    """Half-set, inverted or out-of-range action thresholds, thresholds with no scoring
    stage, and invalid evaluator/refiner settings fail when built."""
    rerank = CrossEncoderRerank(model=str(checkpoints["bert-rerank"]))
    trim = EvidenceTrimmer(model=str(checkpoints["bert-token"]))
    with pytest.raises(ValidationError, match="both action_upper and action_lower"):
        CragCompressor(reranker=rerank, action_upper=0.6)
    with pytest.raises(ValidationError, match="must not exceed"):
        CragCompressor(reranker=rerank, action_upper=0.2, action_lower=0.6)
    with pytest.raises(ValidationError):
        CragCompressor(reranker=rerank, action_upper=1.5, action_lower=0.2)
    with pytest.raises(ValidationError, match="reranker or a relevance_filter"):
        CragCompressor(trimmer=trim, action_upper=0.6, action_lower=0.2)
    path = str(checkpoints["bert-binary"])
    with pytest.raises(ValidationError, match="must not exceed"):
        CragEvaluatorCompressor(model=path, upper=0.2, lower=0.6)
    with pytest.raises(ValidationError, match="scale='logit'"):
        CragEvaluatorCompressor(model=path, upper=0.592, lower=-0.995)
    CragEvaluatorCompressor(model=path, upper=0.592, lower=-0.995, scale="logit")  # cheap
    with pytest.raises(ValidationError, match="threshold, top_k or both"):
        KnowledgeRefinerTrimmer(model=path, threshold=None)
    with pytest.raises(ValidationError):
        KnowledgeRefinerTrimmer(model=path, mode="paragraphs")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        KnowledgeRefinerTrimmer(model=path, on_no_evidence="maybe")  # type: ignore[arg-type]


# --- knowledge refinement -------------------------------------------------------------

REFINE_TEXTS = (
    f"{TEXTS[0]} {TEXTS[1]} Drops grow heavy and fall.",
    f"{TEXTS[2]}  {TEXTS[3]}",
    TEXTS[4],
    "",
    "   ",
)


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_refiner_trimmer_keeps_relevant_strips_with_original_offsets(
    policy: str, checkpoints: dict[str, Path]
) -> None:
    """page_content becomes the kept strips joined in order; crag_strips index the
    original content; crag_num_strips counts all strips; documents with no kept strip
    (the empty and blank ones always) are kept whole or dropped by policy; every strip
    of every document is scored in one forward pass; sync and async agree."""
    # No score cache: every call below really runs the model, on the same batch of strips.
    path = EngineConfig(model=str(checkpoints["bert-rerank"]), cache_size=0)
    probe = KnowledgeRefiner(model=path, threshold=0.0).refine(QUERY, REFINE_TEXTS)
    threshold = _median([s.score for d in probe for s in d.strips])
    expected = KnowledgeRefiner(model=path, threshold=threshold).refine(QUERY, REFINE_TEXTS)
    with_strips = [d.index for d in expected if d.strips]
    assert with_strips
    assert set(with_strips) <= {0, 1, 2}
    assert sum(len(d.strips) for d in expected) < sum(d.num_strips for d in expected)

    trimmer = KnowledgeRefinerTrimmer(
        model=path,
        threshold=threshold,
        on_no_evidence=policy,  # type: ignore[arg-type]
    )
    documents = [
        Document(page_content=text, metadata={"source": f"r-{i}"}, id=f"r-{i}")
        for i, text in enumerate(REFINE_TEXTS)
    ]
    before = get_engine(path).forward_passes
    recorder = _Recorder()
    out = trimmer.compress_documents(documents, QUERY, callbacks=[recorder])
    assert get_engine(path).forward_passes - before == 1
    assert out == asyncio.run(trimmer.acompress_documents(documents, QUERY))
    kept = with_strips if policy == "drop" else list(range(len(REFINE_TEXTS)))
    assert [d.metadata["crag_original_index"] for d in out] == kept
    assert [d.id for d in out] == [f"r-{i}" for i in kept]
    for doc in out:
        refined = expected[doc.metadata["crag_original_index"]]
        original = REFINE_TEXTS[refined.index]
        assert doc.metadata["crag_num_strips"] == refined.num_strips
        assert doc.metadata["crag_strips"] == [
            {"start": s.start, "end": s.end, "text": s.text, "score": s.score}
            for s in refined.strips
        ]
        for strip in doc.metadata["crag_strips"]:
            assert original[strip["start"] : strip["end"]] == strip["text"]
            assert strip["score"] >= threshold
        assert doc.metadata["crag_trimmed"] is bool(refined.strips)
        assert doc.page_content == (refined.refined_text if refined.strips else original)
        assert "relevance_score" not in doc.metadata
    data = recorder.events[0][1]
    dropped = len(REFINE_TEXTS) - len(with_strips) if policy == "drop" else 0
    assert data["dropped_by_reason"] == ({"no_evidence": dropped} if dropped else {})
    assert "action" not in data


def test_refiner_trimmer_top_k_counts_across_documents(checkpoints: dict[str, Path]) -> None:
    """top_k keeps the k best strips over all documents (as the CRAG reference does), so
    the output holds exactly k strips in total, and word windows are offsets too."""
    trimmer = KnowledgeRefinerTrimmer(
        model=str(checkpoints["bert-binary"]), mode="words", window_words=4, threshold=None, top_k=3
    )
    out = trimmer.compress_documents([Document(page_content=t) for t in REFINE_TEXTS[:3]], QUERY)
    assert sum(len(d.metadata["crag_strips"]) for d in out) == 3
    for doc in out:
        original = REFINE_TEXTS[doc.metadata["crag_original_index"]]
        for strip in doc.metadata["crag_strips"]:
            assert original[strip["start"] : strip["end"]] == strip["text"]
            assert len(strip["text"].split()) <= 4


def test_edited_copies_behave_as_their_fields_say(checkpoints: dict[str, Path]) -> None:
    """model_copy(update=...), model_validate and pickling give compressors that do what
    their fields say (nothing derived from the old fields can go stale)."""
    import pickle

    path = str(checkpoints["bert-rerank"])
    documents = _documents()
    three = CrossEncoderRerank(model=path, top_n=3)
    six = three.model_copy(update={"top_n": 6})
    assert six.top_n == 6
    assert len(three.compress_documents(documents, QUERY)) == 3
    assert len(six.compress_documents(documents, QUERY)) == 6
    five = CrossEncoderRerank.model_validate({**three.model_dump(), "top_n": 5})
    assert len(five.compress_documents(documents, QUERY)) == 5
    unpickled = pickle.loads(pickle.dumps(six))
    assert unpickled.compress_documents(documents, QUERY) == six.compress_documents(
        documents, QUERY
    )
    crag = CragCompressor(reranker=three).model_copy(update={"reranker": six})
    assert len(crag.compress_documents(documents, QUERY)) == 6
