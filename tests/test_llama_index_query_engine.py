"""Each postprocessor inside a real LlamaIndex query engine, sync and async alike.

A ``VectorStoreIndex`` is built from ``Document``s (split into nodes by LlamaIndex's default
transformations) with a deterministic bag-of-words embedding and ``MockLLM``: nothing leaves
the machine. For every postprocessor, ``query`` and ``aquery`` must hand the synthesizer the
same source nodes, each query must emit one ``ReRankStartEvent`` and one ``ReRankEndEvent``,
and the index's docstore must be exactly as it was before the queries.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore

from crag_integrations.llama_index import (
    CragEvaluatorPostprocessor,
    CragPostprocessor,
    CrossEncoderRerank,
    EvidenceTrimmer,
    KnowledgeRefinerTrimmer,
    RelevanceFilter,
)

Checkpoints = dict[str, Path]

#: How each postprocessor under test is built from the session's tiny checkpoints: the one
#: place its constructor is spelled.
POSTPROCESSORS: dict[str, Callable[[Checkpoints], BaseNodePostprocessor]] = {
    "CrossEncoderRerank": lambda c: CrossEncoderRerank(model=str(c["bert-rerank"]), top_n=3),
    "RelevanceFilter": lambda c: RelevanceFilter(model=str(c["bert-binary"]), threshold=0.0),
    "EvidenceTrimmer": lambda c: EvidenceTrimmer(model=str(c["bert-token"]), threshold=0.05),
    "CragPostprocessor": lambda c: CragPostprocessor(
        reranker=CrossEncoderRerank(model=str(c["bert-rerank"]), top_n=3),
        relevance_filter=RelevanceFilter(model=str(c["bert-binary"]), threshold=0.0),
        trimmer=EvidenceTrimmer(model=str(c["bert-token"]), threshold=0.05),
        action_upper=0.6,
        action_lower=0.2,
    ),
    "CragEvaluatorPostprocessor": lambda c: CragEvaluatorPostprocessor(model=str(c["bert-binary"])),
    "KnowledgeRefinerTrimmer": lambda c: KnowledgeRefinerTrimmer(
        model=str(c["bert-rerank"]), threshold=None, top_k=3
    ),
}

QUERY = "What causes rain?"
DOCUMENTS = (
    ("Rain forms when water vapor condenses into droplets. The droplets grow and fall.", "a"),
    ("The Eiffel Tower is a wrought-iron lattice tower in Paris, France.", "b"),
    ("Photosynthesis converts light energy into chemical energy stored in glucose.", "c"),
    ("Clouds are made of tiny droplets of water. They drift with the wind.", "d"),
    ("A reranker sorts retrieved chunks so that the most relevant ones come first.", "e"),
)


class TrigramEmbedding(BaseEmbedding):
    """Deterministic, local embedding: character-trigram counts hashed into ``dim`` buckets.

    Texts sharing trigrams get closer vectors, so retrieval scores differ between nodes (a
    constant mock embedding would tie them all).
    """

    dim: int = 64

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dim
        text = " ".join(re.findall(r"\w+", text.lower()))
        for start in range(len(text) - 2):
            vector[zlib.crc32(text[start : start + 3].encode()) % self.dim] += 1.0
        return vector

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)


class Recorder(BaseEventHandler):
    """Collects every instrumentation event it is given."""

    events: list[BaseEvent] = []

    @classmethod
    def class_name(cls) -> str:
        return "QueryEngineRecorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)

    def reranks(self) -> tuple[int, int]:
        """How many ``ReRankStartEvent`` and ``ReRankEndEvent`` were seen, and forget them."""
        counts = (
            sum(isinstance(e, ReRankStartEvent) for e in self.events),
            sum(isinstance(e, ReRankEndEvent) for e in self.events),
        )
        self.events.clear()
        return counts


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A real handler on the root dispatcher, removed after the test."""
    root = get_dispatcher()
    handler = Recorder(events=[])
    root.add_event_handler(handler)
    try:
        yield handler
    finally:
        root.event_handlers = [h for h in root.event_handlers if h is not handler]


@pytest.fixture
def index() -> VectorStoreIndex:
    """An index over ``DOCUMENTS`` whose nodes carry metadata, some of it excluded."""
    documents = [
        Document(
            text=text,
            id_=f"doc-{i}",
            metadata={"file_name": f"doc{i}.txt", "author": author},
            excluded_llm_metadata_keys=["author"],
            excluded_embed_metadata_keys=["file_name"],
        )
        for i, (text, author) in enumerate(DOCUMENTS)
    ]
    return VectorStoreIndex.from_documents(documents, embed_model=TrigramEmbedding())


def _docstore(index: VectorStoreIndex) -> dict[str, dict[str, Any]]:
    return {node_id: node.model_dump() for node_id, node in index.docstore.docs.items()}


def _sources(nodes: list[NodeWithScore]) -> list[tuple[str, str]]:
    return [(n.node_id, n.node.get_content(metadata_mode=MetadataMode.NONE)) for n in nodes]


def test_the_index_is_what_the_tests_assume(index: VectorStoreIndex) -> None:
    """One node per document, with distinct retrieval scores and the metadata exclusions."""
    nodes = index.docstore.docs.values()
    assert len(nodes) == len(DOCUMENTS)
    assert all(n.excluded_llm_metadata_keys == ["author"] for n in nodes)
    retrieved = index.as_retriever(similarity_top_k=len(DOCUMENTS)).retrieve(QUERY)
    assert len({n.score for n in retrieved}) == len(DOCUMENTS)


@pytest.mark.parametrize("name", sorted(POSTPROCESSORS))
def test_query_equals_aquery_with_one_rerank_event_each_and_the_docstore_unchanged(
    name: str, index: VectorStoreIndex, checkpoints: Checkpoints, recorder: Recorder
) -> None:
    """query() and aquery() return the same source nodes; each query sends one event pair."""
    post = POSTPROCESSORS[name](checkpoints)
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=len(DOCUMENTS), node_postprocessors=[post]
    )
    before = _docstore(index)

    synced = engine.query(QUERY)
    assert recorder.reranks() == (1, 1)
    awaited = asyncio.run(engine.aquery(QUERY))
    assert recorder.reranks() == (1, 1)

    assert synced.source_nodes, f"{name} returned no source node: nothing was compared"
    assert _sources(awaited.source_nodes) == _sources(synced.source_nodes)
    for sync_node, async_node in zip(synced.source_nodes, awaited.source_nodes, strict=True):
        assert sync_node.score is not None and async_node.score is not None
        assert async_node.score == pytest.approx(sync_node.score, abs=1e-6)
        assert async_node.node.metadata.keys() == sync_node.node.metadata.keys()
    assert _docstore(index) == before
