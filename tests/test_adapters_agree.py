"""Both adapters, same stage, same inputs: the same decisions and the same metadata."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

import crag_integrations.langchain as lc
import crag_integrations.llama_index as li

QUERY = "what causes rain?"
TEXTS = (
    "Rain forms when water vapour condenses. Drops grow heavy and fall to the ground.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "A reranker sorts retrieved chunks so that the most relevant ones come first.",
    "",
)
NONE = MetadataMode.NONE


def _both(
    checkpoints: dict[str, Path],
) -> dict[str, Callable[[Any], Any]]:
    """Per stage: build it from an adapter module with identical options."""
    rerank, grade = str(checkpoints["bert-rerank"]), str(checkpoints["bert-binary"])
    token = str(checkpoints["bert-token"])
    return {
        "rerank": lambda m: m.CrossEncoderRerank(model=rerank, top_n=3, **_mode(m)),
        "filter": lambda m: m.RelevanceFilter(model=grade, threshold=0.5, **_mode(m)),
        "trim": lambda m: m.EvidenceTrimmer(model=token, threshold=0.4, min_span_chars=1),
        "crag": lambda m: (
            m.CragCompressor(
                reranker=m.CrossEncoderRerank(model=rerank, top_n=3),
                relevance_filter=m.RelevanceFilter(model=grade, threshold=0.0),
                trimmer=m.EvidenceTrimmer(model=token, threshold=0.4, min_span_chars=1),
                action_upper=0.6,
                action_lower=0.2,
            )
            if m is lc
            else m.CragPostprocessor(
                reranker=m.CrossEncoderRerank(model=rerank, top_n=3, metadata_mode=NONE),
                relevance_filter=m.RelevanceFilter(model=grade, threshold=0.0, metadata_mode=NONE),
                trimmer=m.EvidenceTrimmer(model=token, threshold=0.4, min_span_chars=1),
                action_upper=0.6,
                action_lower=0.2,
            )
        ),
        "evaluate": lambda m: (
            m.CragEvaluatorCompressor if m is lc else m.CragEvaluatorPostprocessor
        )(model=grade, upper=0.55, lower=0.45, drop_incorrect=True, **_mode(m)),
        "refine": lambda m: m.KnowledgeRefinerTrimmer(model=rerank, threshold=0.5),
    }


def _mode(module: Any) -> dict[str, Any]:
    # LlamaIndex scores the node's EMBED content by default; these nodes carry metadata-free
    # text, and NONE says so explicitly so both adapters read exactly TEXTS.
    return {} if module is lc else {"metadata_mode": NONE}


@pytest.mark.parametrize("stage", ["rerank", "filter", "trim", "crag", "evaluate", "refine"])
def test_same_inputs_give_the_same_output_and_metadata(
    stage: str, checkpoints: dict[str, Path]
) -> None:
    """Order, texts, every crag_* key and the one relevance score agree exactly."""
    build = _both(checkpoints)[stage]
    documents = [Document(page_content=t, id=f"d{i}") for i, t in enumerate(TEXTS)]
    nodes = [
        NodeWithScore(node=TextNode(id_=f"d{i}", text=t), score=None) for i, t in enumerate(TEXTS)
    ]
    docs_out = build(lc).compress_documents(documents, QUERY)
    nodes_out = build(li).postprocess_nodes(nodes, query_str=QUERY)
    assert docs_out, "premise: something is kept"
    assert [d.id for d in docs_out] == [n.node_id for n in nodes_out]
    assert [d.page_content for d in docs_out] == [n.node.get_content(NONE) for n in nodes_out]
    for doc, node in zip(docs_out, nodes_out, strict=True):
        ours = {k: v for k, v in doc.metadata.items() if k.startswith("crag_")}
        theirs = {k: v for k, v in node.metadata.items() if k.startswith("crag_")}
        assert ours == theirs
        assert doc.metadata.get("relevance_score") == node.score
