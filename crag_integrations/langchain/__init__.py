"""LangChain adapters: rerank, filter and trim retrieved documents as document compressors.

Every class here translates between LangChain documents and the stages below it; none of
them decides anything itself. Options come from :mod:`crag_integrations.options` (shared
with the LlamaIndex adapters: same names, defaults and checks), the decisions from
:mod:`crag_integrations.pipeline` and :mod:`crag_integrations.crag`, the metadata schema
from :mod:`crag_integrations.metadata`.

- :class:`CrossEncoderRerank`: sort by a one-logit cross-encoder, threshold, cut to ``top_n``.
- :class:`RelevanceFilter`: drop documents a relevance grader grades not relevant.
- :class:`EvidenceTrimmer`: replace each document's content by its evidence spans.
- :class:`CragCompressor`: rerank, filter and trim in one pass; optionally decide the CRAG
  action on the way (``action_upper`` / ``action_lower``).
- :class:`CragEvaluatorCompressor`: score every document with a
  :class:`~crag_integrations.crag.CragEvaluator` in one batched call and write the CRAG
  action (query level) and each document's own band into the metadata.
- :class:`KnowledgeRefinerTrimmer`: CRAG knowledge refinement as a model-agnostic trimmer
  (split into strips, keep the relevant ones), beside the token-classifier
  :class:`EvidenceTrimmer`.
- :class:`CragCrossEncoder`: a ``langchain_core`` ``BaseCrossEncoder`` on the shared engine,
  for LangChain's own ``CrossEncoderReranker``.

Output documents are copies: ``id`` and existing metadata are kept (metadata is deep-copied),
and results are written under ``relevance_score`` plus the ``crag_*`` keys of
``docs/metadata.md``. The caller's documents are never mutated. Each call dispatches one
LangChain custom event, :data:`COMPRESSION_EVENT`, with counts and timing (and the CRAG
action, when the compressor decides one).

Only ``langchain-core`` is needed (``pip install "crag-integrations[langchain]"``).

Example:
    >>> from langchain_classic.retrievers import ContextualCompressionRetriever
    >>> from crag_integrations.langchain import CrossEncoderRerank
    >>> retriever = ContextualCompressionRetriever(
    ...     base_compressor=CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2"),
    ...     base_retriever=vector_store.as_retriever(search_kwargs={"k": 20}),
    ... )  # doctest: +SKIP
    >>> retriever.invoke("what causes rain?")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

_INSTALL_HINT = 'pip install -U "crag-integrations[langchain]"'

try:
    import langchain_core.callbacks
    import langchain_core.cross_encoders
    import langchain_core.documents
    import langchain_core.runnables.config  # noqa: F401  (the guard: is the extra usable?)
except ModuleNotFoundError as exc:
    # Only a missing langchain_core (or one of its modules, i.e. a too-old version) is
    # turned into the install hint; any other missing module is a real bug and propagates.
    if exc.name is None or exc.name.split(".")[0] != "langchain_core":
        raise
    what = (
        "langchain-core is not installed"
        if exc.name == "langchain_core"
        else f"the installed langchain-core is too old (it has no {exc.name})"
    )
    raise ImportError(
        f"crag_integrations.langchain needs langchain-core >= 1.4.4, but {what}. "
        f"Install it with: {_INSTALL_HINT}"
    ) from exc

# After the guard on purpose: a missing extra must fail with the hint above, not here.
from crag_integrations.langchain.compressors import (  # noqa: E402
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

__all__ = [
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

_RENAMED = {"RelevanceGraderFilter": "RelevanceFilter"}


def __getattr__(name: str) -> Any:
    # The 0.1 name of the filter, kept for one release so existing code keeps working.
    if name in _RENAMED:
        warnings.warn(
            f"crag_integrations.langchain.{name} is now {_RENAMED[name]} (the name the "
            "LlamaIndex adapter uses too); the old name will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
