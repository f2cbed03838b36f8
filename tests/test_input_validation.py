"""Bad input gets a clear error before any model work, the same way in the roles and in
both adapters (issue: loose parameters and adapters passing bad input to deep errors)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode

import crag_integrations.langchain as lc
import crag_integrations.llama_index as li
from crag_integrations import (
    CragEvaluator,
    EvidenceHighlighter,
    KnowledgeRefiner,
    RelevanceGrader,
    Reranker,
    get_engine,
)
from crag_integrations.inputs import check_count, check_labels, check_number

QUERY = "what causes rain?"

# (role, field, bad value, error type, message fragment)
BAD_SETTINGS: list[tuple[type, dict[str, Any], type[Exception], str]] = [
    (Reranker, {"top_n": True}, TypeError, "top_n must be an int"),
    (Reranker, {"top_n": 2.5}, TypeError, "top_n must be an int"),
    (Reranker, {"top_n": "2"}, TypeError, "top_n must be an int"),
    (Reranker, {"score_threshold": "0"}, TypeError, "score_threshold must be a number"),
    (Reranker, {"score_threshold": float("nan")}, ValueError, "NaN"),
    (RelevanceGrader, {"threshold": "0.5"}, TypeError, "threshold must be a number"),
    (RelevanceGrader, {"threshold": float("nan")}, ValueError, "NaN"),
    (RelevanceGrader, {"relevant_labels": "LABEL_1"}, TypeError, "not one string"),
    (CragEvaluator, {"upper": float("nan")}, ValueError, "NaN"),
    (CragEvaluator, {"relevant_labels": "LABEL_1"}, TypeError, "not one string"),
    (KnowledgeRefiner, {"top_k": True}, TypeError, "top_k must be an int"),
    (KnowledgeRefiner, {"threshold": "0.5"}, TypeError, "threshold must be a number"),
]


@pytest.mark.parametrize(("role", "fields", "error", "message"), BAD_SETTINGS)
def test_roles_refuse_loose_settings_at_construction(
    role: type, fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bool, a string or NaN where a count or a number belongs is refused by the role."""
    with pytest.raises(error, match=message):
        role(model="org/unused", **fields)


ADAPTER_SETTINGS = [
    ("CrossEncoderRerank", {"top_n": True}),
    ("CrossEncoderRerank", {"top_n": "2"}),
    ("CrossEncoderRerank", {"top_n": 2.5}),
    ("CrossEncoderRerank", {"score_threshold": "0"}),
    ("CrossEncoderRerank", {"score_threshold": float("nan")}),
    ("RelevanceFilter", {"threshold": float("nan")}),
    ("RelevanceFilter", {"relevant_labels": "LABEL_1"}),
    ("EvidenceTrimmer", {"threshold": "0.2"}),
    ("KnowledgeRefinerTrimmer", {"top_k": True}),
]


@pytest.mark.parametrize("module", [lc, li], ids=["langchain", "llama_index"])
@pytest.mark.parametrize(("name", "fields"), ADAPTER_SETTINGS)
def test_adapters_refuse_the_same_loose_settings(
    module: Any, name: str, fields: dict[str, Any]
) -> None:
    """Both adapters refuse what the roles refuse, at construction (pydantic strictness)."""
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError, one contract
        getattr(module, name)(model="org/unused", **fields)


def test_the_pure_checks_on_exact_cases() -> None:
    """The three checkers behind the roles: exact accepted and refused values."""
    assert check_count("n", 0) == 0 and check_count("n", None) is None
    with pytest.raises(ValueError, match=">= 0"):
        check_count("n", -1)
    assert check_number("x", 1, low=0.0, high=1.0) == 1.0
    assert check_number("x", None, optional=True) is None
    with pytest.raises(TypeError):
        check_number("x", None)
    with pytest.raises(ValueError, match=r"in \[0.0, 1.0\]"):
        check_number("x", 1.5, low=0.0, high=1.0)
    assert check_labels("labels", ["a", "b"]) == ("a", "b")
    with pytest.raises(TypeError, match=r"labels\[1\] must be a str"):
        check_labels("labels", ["a", 1])


@pytest.mark.parametrize(
    ("texts", "message"),
    [({"a": "x"}, "mapping"), ({"x", "y"}, "set"), (frozenset({"x"}), "set")],
)
def test_unordered_or_keyed_texts_are_refused(
    texts: object, message: str, checkpoints: dict[str, Path]
) -> None:
    """A dict would have its keys scored and a set has no order: both are TypeErrors."""
    with pytest.raises(TypeError, match=message):
        Reranker(model=str(checkpoints["bert-rerank"])).score(QUERY, texts)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=message):
        EvidenceHighlighter(model=str(checkpoints["bert-token"])).highlight(QUERY, texts)  # type: ignore[arg-type]


BAD_DOCUMENTS = [None, ["a plain string"], Document(page_content="bare"), [None], "text"]


@pytest.mark.parametrize("documents", BAD_DOCUMENTS, ids=repr)
def test_langchain_bad_documents_are_type_errors_before_any_model_work(
    documents: Any, tmp_path: Path
) -> None:
    """compress_documents(None), a list of str, a bare Document, [None]: a TypeError naming
    what was expected, sync and async, and no model is loaded (none exists here)."""
    compressor = lc.CrossEncoderRerank(model=str(tmp_path / "no-model"))
    with pytest.raises(TypeError, match="documents"):
        compressor.compress_documents(documents, QUERY)
    with pytest.raises(TypeError, match="documents"):
        asyncio.run(compressor.acompress_documents(documents, QUERY))


BAD_NODES = [None, [TextNode(text="a node, not a NodeWithScore")], [None], ["text"]]


@pytest.mark.parametrize("nodes", BAD_NODES, ids=repr)
def test_llama_index_bad_nodes_are_type_errors_before_any_model_work(
    nodes: Any, tmp_path: Path
) -> None:
    """postprocess_nodes([TextNode(...)]) or [None]: a TypeError naming NodeWithScore,
    before any event or model work, sync and async."""
    post = li.CrossEncoderRerank(model=str(tmp_path / "no-model"))
    with pytest.raises(TypeError, match="NodeWithScore"):
        post.postprocess_nodes(nodes, query_str=QUERY)
    with pytest.raises(TypeError, match="NodeWithScore"):
        asyncio.run(post.apostprocess_nodes(nodes, query_str=QUERY))


def test_good_nodes_still_work_after_the_checks(checkpoints: dict[str, Path]) -> None:
    """The checks refuse only what is wrong: real inputs still score."""
    path = str(checkpoints["bert-rerank"])
    node = NodeWithScore(node=TextNode(text="Rain is condensed vapour."), score=0.5)
    assert li.CrossEncoderRerank(model=path).postprocess_nodes([node], query_str=QUERY)
    doc = Document(page_content="Rain is condensed vapour.")
    assert lc.CrossEncoderRerank(model=path).compress_documents([doc], QUERY)
    assert get_engine(path).is_loaded


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"evidence_labels": "B-EVID"}, TypeError, "not one string"),
        ({"threshold": True}, TypeError, "threshold must be a number"),
        ({"threshold": "0.2"}, TypeError, "threshold must be a number"),
        ({"doc_stride": 1.5}, TypeError, "doc_stride must be an int"),
        ({"min_span_chars": True}, TypeError, "min_span_chars must be an int"),
        ({"separator": None}, TypeError, "separator must be a str"),
        ({"return_sentence_scores": "no"}, TypeError, "True or False"),
        ({"max_length": 0}, ValueError, "at least 8"),
        ({"max_length": -3}, ValueError, ">= 0"),
    ],
)
def test_the_highlighter_checks_its_settings_like_the_other_roles(
    fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    """EvidenceHighlighter refuses loose settings at construction, as Reranker and
    RelevanceGrader do (a label string would be split into characters)."""
    with pytest.raises(error, match=message):
        EvidenceHighlighter(model="org/unused", **fields)


def test_rank_overrides_get_the_fields_checks(checkpoints: dict[str, Path]) -> None:
    """rank()/arank() top_n and score_threshold are checked like the fields (they also come
    from HTTP requests); None keeps the field."""
    reranker = Reranker(model=str(checkpoints["bert-rerank"]), top_n=2)
    texts = ["rain falls", "tokyo", "paris", "clouds"]
    with pytest.raises(TypeError, match="top_n must be an int"):
        reranker.rank(QUERY, texts, top_n=True)
    with pytest.raises(ValueError, match="NaN"):
        reranker.rank(QUERY, texts, score_threshold=float("nan"))
    with pytest.raises(TypeError, match="top_n must be an int"):
        asyncio.run(reranker.arank(QUERY, texts, top_n=2.5))  # type: ignore[arg-type]
    assert len(reranker.rank(QUERY, texts, top_n=None)) == 2
    assert len(reranker.rank(QUERY, texts, top_n=3)) == 3
