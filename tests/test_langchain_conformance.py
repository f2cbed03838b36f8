"""LangChain's standard retriever tests pass over a compression retriever with each compressor.

``langchain-tests``' :class:`RetrieversIntegrationTests` (pinned in the ``dev`` group) run
over ``ContextualCompressionRetriever(base_retriever=..., base_compressor=...)`` as a user
builds it: the base retriever is a real in-memory vector store with LangChain's
deterministic fake embedding, the compressor one of ours on the session's tiny checkpoints.
Each compressor below keeps every document it is given (no ``top_n`` cut, threshold 0,
``on_no_evidence="keep"``), so the number of results is the base retriever's ``k``, which
is what the standard tests set (in the constructor and as an ``invoke`` keyword, which
``ContextualCompressionRetriever`` forwards to its base retriever). No standard test is
skipped or marked: all apply.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests

from crag_integrations.langchain import (
    CragCompressor,
    CragEvaluatorCompressor,
    CrossEncoderRerank,
    EvidenceTrimmer,
    KnowledgeRefinerTrimmer,
    RelevanceFilter,
)

Checkpoints = dict[str, Path]

#: How each compressor under test is built from the session's tiny checkpoints: the one place
#: its constructor is spelled. Every one must keep all the documents it receives.
COMPRESSORS: dict[str, Callable[[Checkpoints], BaseDocumentCompressor]] = {
    "CrossEncoderRerank": lambda c: CrossEncoderRerank(model=str(c["bert-rerank"]), top_n=None),
    "RelevanceFilter": lambda c: RelevanceFilter(model=str(c["bert-binary"]), threshold=0.0),
    "EvidenceTrimmer": lambda c: EvidenceTrimmer(model=str(c["bert-token"])),
    "CragCompressor": lambda c: CragCompressor(
        reranker=CrossEncoderRerank(model=str(c["bert-rerank"]), top_n=None),
        relevance_filter=RelevanceFilter(model=str(c["bert-binary"]), threshold=0.0),
        trimmer=EvidenceTrimmer(model=str(c["bert-token"])),
        action_upper=0.6,
        action_lower=0.2,
    ),
    "CragEvaluatorCompressor": lambda c: CragEvaluatorCompressor(model=str(c["bert-binary"])),
    "KnowledgeRefinerTrimmer": lambda c: KnowledgeRefinerTrimmer(model=str(c["bert-rerank"])),
}

QUERY = "What causes rain?"
CORPUS = (
    "Rain forms when water vapor condenses into droplets. The droplets grow and fall.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Clouds are made of tiny droplets of water or ice crystals. They drift with the wind.",
    "A reranker sorts retrieved chunks so that the most relevant ones come first.",
)


def compression_retriever(
    *, compressor: BaseDocumentCompressor, k: int = 4
) -> ContextualCompressionRetriever:
    """A ``ContextualCompressionRetriever`` over an in-memory store of ``CORPUS``.

    ``ContextualCompressionRetriever`` itself has no ``k``: the number of results is its base
    retriever's, so this builds the base retriever with ``k`` as a user would.
    """
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents(
        [Document(page_content=t, metadata={"source": f"doc-{i}"}) for i, t in enumerate(CORPUS)],
        ids=[f"doc-{i}" for i in range(len(CORPUS))],
    )
    return ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=store.as_retriever(search_kwargs={"k": k})
    )


class _CompressionRetrieverTests(RetrieversIntegrationTests):
    """The standard tests, over ``compression_retriever`` with ``COMPRESSORS[compressor]``."""

    compressor: str
    _checkpoints: Checkpoints

    @pytest.fixture(autouse=True)
    def _bind_checkpoints(self, checkpoints: Checkpoints) -> None:
        # The standard tests read the retriever's parameters from properties, which cannot
        # request fixtures; pytest binds this fixture to the test's own instance.
        self._checkpoints = checkpoints

    @property
    def retriever_constructor(self) -> Callable[..., BaseRetriever]:  # type: ignore[override]
        # A factory where the base declares type[BaseRetriever] (hence the ignore): the
        # standard tests only call it, and compression_retriever says why a class won't do.
        return compression_retriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"compressor": COMPRESSORS[self.compressor](self._checkpoints)}

    @property
    def retriever_query_example(self) -> str:
        return QUERY

    def test_results_are_the_compressors_annotated_copies(self) -> None:
        """What the retriever returns went through our compressor (its metadata is there)."""
        retriever = self.retriever_constructor(**self.retriever_constructor_params)
        for documents in (retriever.invoke(QUERY), retriever.batch([QUERY])[0]):
            assert len(documents) == 4
            assert all("crag_original_index" in d.metadata for d in documents)
            assert {d.metadata["source"] for d in documents} <= {
                f"doc-{i}" for i in range(len(CORPUS))
            }


class TestCrossEncoderRerank(_CompressionRetrieverTests):
    compressor = "CrossEncoderRerank"


class TestRelevanceFilter(_CompressionRetrieverTests):
    compressor = "RelevanceFilter"


class TestEvidenceTrimmer(_CompressionRetrieverTests):
    compressor = "EvidenceTrimmer"


class TestCragCompressor(_CompressionRetrieverTests):
    compressor = "CragCompressor"


class TestCragEvaluatorCompressor(_CompressionRetrieverTests):
    compressor = "CragEvaluatorCompressor"


class TestKnowledgeRefinerTrimmer(_CompressionRetrieverTests):
    compressor = "KnowledgeRefinerTrimmer"


def test_every_compressor_is_covered() -> None:
    """One standard-test class per entry of the factory table, and no entry untested."""
    tested = {cls.compressor for cls in _CompressionRetrieverTests.__subclasses__()}
    assert tested == set(COMPRESSORS)
