"""Property tests over the roles, the pipeline and both adapters, on arbitrary unicode.

Whatever the texts (surrogates, control characters, NUL, right-to-left, combining marks,
emoji sequences, empty and whitespace-only, longer than a window, duplicates, the same
object twice): nothing is lost, duplicated, reordered where order is promised, or mutated,
and every input gets either its result or an error of its own.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.documents import Document
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

import crag_integrations.langchain as lc
import crag_integrations.llama_index as li
from crag_integrations import (
    EngineConfig,
    EvidenceHighlighter,
    RelevanceGrader,
    Reranker,
    RerankGradeTrimPipeline,
)

QUERY = "what causes rain?"

#: Every code point hypothesis can draw, lone surrogates included, plus hand-picked hard
#: cases: NUL, controls, right-to-left marks and text, combining marks, emoji sequences.
HARD = [
    "\x00",
    "\x07\x1b",
    "\u200f\u05e9\u05dc\u05d5\u05dd",
    "e\u0301\u0327",
    "\U0001f469\u200d\U0001f52c",
    "\U0001f1ef\U0001f1f5",
    "\ud800",
    "   ",
    "",
    "rain " * 40,
]
CHARACTERS = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TEXT = st.one_of(st.sampled_from(HARD), st.text(CHARACTERS, max_size=30), st.text(max_size=60))
TEXTS = st.lists(TEXT, max_size=6)
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_bad(texts: list[str]) -> int | None:
    return next((i for i, t in enumerate(texts) if not _encodable(t)), None)


@pytest.fixture(scope="module")
def models(checkpoints: dict[str, Path]) -> dict[str, EngineConfig]:
    """Small windows, so that the long texts are read in several."""
    # No score cache: "equal to scoring that text alone" must run the model again.
    return {
        name: EngineConfig(model=str(checkpoints[key]), max_length=32, stride=8, cache_size=0)
        for name, key in (
            ("rerank", "bert-rerank"),
            ("grade", "bert-binary"),
            ("token", "bert-token"),
        )
    }


@SETTINGS
@given(texts=TEXTS)
def test_roles_keep_every_text_in_order_or_name_the_bad_one(
    models: dict[str, EngineConfig], texts: list[str]
) -> None:
    """One result per text, in input order, each equal to scoring that text alone; or a
    ValueError naming the first text that cannot be encoded; the caller's list unchanged."""
    before = list(texts)
    reranker = Reranker(model=models["rerank"])
    bad = _first_bad(texts)
    if bad is not None:
        with pytest.raises(ValueError, match=rf"texts\[{bad}\]"):
            reranker.score_texts(QUERY, texts)
        assert texts == before
        return
    ranked = reranker.score_texts(QUERY, texts)
    grades = RelevanceGrader(model=models["grade"]).grade(QUERY, texts)
    highlights = EvidenceHighlighter(model=models["token"], min_span_chars=0).highlight(
        QUERY, texts
    )
    assert texts == before
    assert [r.index for r in ranked] == [g.index for g in grades] == list(range(len(texts)))
    assert [r.text for r in ranked] == [h.text for h in highlights] == texts
    for text, result in zip(texts, ranked, strict=True):
        (alone,) = reranker.score_texts(QUERY, [text])
        assert result.score == pytest.approx(alone.score, abs=1e-5)
    for text, highlight in zip(texts, highlights, strict=True):
        for span in highlight.spans:
            assert text[span.start : span.end] == span.text


@SETTINGS
@given(texts=TEXTS, top_n=st.one_of(st.none(), st.integers(0, 6)))
def test_the_pipeline_accounts_for_every_text_exactly_once(
    models: dict[str, EngineConfig], texts: list[str], top_n: int | None
) -> None:
    """kept + dropped is a permutation of the inputs; outputs are the caller's texts or
    exact evidence slices of them."""
    pipeline = RerankGradeTrimPipeline(
        reranker=Reranker(model=models["rerank"], top_n=top_n),
        grader=RelevanceGrader(model=models["grade"], threshold=0.0),
        highlighter=EvidenceHighlighter(model=models["token"], min_span_chars=0),
    )
    if _first_bad(texts) is not None:
        with pytest.raises(ValueError, match="texts"):
            pipeline.run(QUERY, texts)
        return
    result = pipeline.run(QUERY, texts)
    indices = [k.index for k in result.kept] + [d.index for d in result.dropped]
    assert sorted(indices) == list(range(len(texts)))
    for item in result.kept:
        assert item.text == texts[item.index]
        if item.highlight is not None and item.highlight.spans:
            for span in item.highlight.spans:
                assert item.text[span.start : span.end] == span.text


@SETTINGS
@given(texts=TEXTS, twice=st.booleans())
def test_adapters_lose_duplicate_mutate_nothing(
    models: dict[str, EngineConfig], texts: list[str], twice: bool
) -> None:
    """Both adapters: every output is a copy of a distinct input position, inputs are
    unchanged (the same object given twice included), the order is the rerank order."""
    documents = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(texts)]
    nodes = [NodeWithScore(node=TextNode(text=t, metadata={"i": i})) for i, t in enumerate(texts)]
    if twice and documents:
        documents.append(documents[0])
        nodes.append(nodes[0])
    snapshot_docs, snapshot_nodes = copy.deepcopy(documents), [n.model_dump() for n in nodes]
    rerank_lc = lc.CrossEncoderRerank(model=models["rerank"], top_n=None)
    rerank_li = li.CrossEncoderRerank(
        model=models["rerank"], top_n=None, metadata_mode=MetadataMode.NONE
    )
    all_texts = [d.page_content for d in documents]
    bad = _first_bad(all_texts)
    if bad is not None:
        with pytest.raises(ValueError, match=rf"texts\[{bad}\]"):
            rerank_lc.compress_documents(documents, QUERY)
        with pytest.raises(ValueError, match=rf"texts\[{bad}\]"):
            rerank_li.postprocess_nodes(nodes, query_str=QUERY)
    else:
        docs_out = rerank_lc.compress_documents(documents, QUERY)
        nodes_out = rerank_li.postprocess_nodes(nodes, query_str=QUERY)
        positions = [d.metadata["crag_original_index"] for d in docs_out]
        assert sorted(positions) == list(range(len(documents)))
        assert [n.metadata["crag_original_index"] for n in nodes_out] == positions
        expected = Reranker(model=models["rerank"]).rank(QUERY, all_texts)
        assert positions == [r.index for r in expected]
        assert not any(out is src for out in docs_out for src in documents)
    assert documents == snapshot_docs
    assert [n.model_dump() for n in nodes] == snapshot_nodes
