"""LlamaIndex node postprocessors: rerank, filter, trim, and decide the CRAG action.

Six :class:`~llama_index.core.postprocessor.types.BaseNodePostprocessor` subclasses that
*translate* between LlamaIndex nodes and the stages below them. Their options are those of
:mod:`crag_integrations.options` (shared with the LangChain adapters: same names, defaults and
checks); every keep/drop/sort decision and every CRAG action is made by
:class:`~crag_integrations.RerankGradeTrimPipeline`, the roles and :mod:`crag_integrations.crag`;
the metadata schema is :mod:`crag_integrations.metadata`.

- :class:`CrossEncoderRerank`: sort by a one-logit cross-encoder, optional threshold, ``top_n``.
- :class:`RelevanceFilter`: drop nodes a relevance grader calls not relevant.
- :class:`EvidenceTrimmer`: replace each node's text by the evidence spans a token classifier
  finds in it.
- :class:`CragPostprocessor`: the three in sequence (each stage optional), optionally
  deciding the CRAG action on the way (``action_upper`` / ``action_lower``).
- :class:`CragEvaluatorPostprocessor`: the CRAG retrieval evaluator
  (:class:`~crag_integrations.crag.CragEvaluator`): scores every node in one batched call
  and writes the query's action (``correct`` / ``ambiguous`` / ``incorrect``) into each.
- :class:`KnowledgeRefinerTrimmer`: CRAG knowledge refinement
  (:class:`~crag_integrations.crag.KnowledgeRefiner`), the model-agnostic alternative to
  :class:`EvidenceTrimmer`: keep each node's relevant strips.

Contract shared by all six:

- The caller's ``NodeWithScore`` and node objects are never mutated; every returned node is
  a deep copy (``model_copy(deep=True)``) with the same ``id_`` and relationships.
- Stages that judge relevance (rerank, filter, evaluate) read
  ``node.get_content(metadata_mode=MetadataMode.EMBED)``, as LlamaIndex's
  ``SentenceTransformerRerank`` does (``metadata_mode=MetadataMode.NONE`` for the text
  alone); stages that return character spans (trim, refine) read the node's own text
  (``MetadataMode.NONE``), so that span offsets point into it.
- ``NodeWithScore.score`` becomes the rerank probability (``sigmoid`` of the logit, in
  ``[0, 1]``) when a reranker ran, else the relevance probability when a grader ran, else
  the evaluator's score, else stays the incoming score. The first incoming score is kept in
  ``metadata["retrieval_score"]`` (the key LlamaIndex's own rerankers use; an existing value
  is never overwritten, so a chain of postprocessors keeps the retriever's score).
- Bookkeeping goes into the ``crag_*`` metadata keys of ``docs/metadata.md`` (the same as
  the LangChain adapters write), and every key written here is added to
  ``excluded_llm_metadata_keys`` and ``excluded_embed_metadata_keys`` of the copy so it never
  reaches the LLM prompt or an embedding.
- ``ReRankStartEvent`` / ``ReRankEndEvent`` are sent through the instrumentation dispatcher
  and a ``CBEventType.RERANKING`` event through the callback manager, as LlamaIndex's own
  rerankers do.

Importing this module without ``llama-index-core`` raises an ``ImportError`` naming the extra.

Example:
    >>> from crag_integrations.llama_index import CrossEncoderRerank
    >>> rerank = CrossEncoderRerank(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=3)
    >>> engine = index.as_query_engine(node_postprocessors=[rerank])  # doctest: +SKIP
"""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401  (the guard: is the extra installed at all?)
except ModuleNotFoundError as error:
    # Only a missing llama_index / llama_index.core means "extra not installed"; anything
    # else (a broken install, a missing transitive dependency) must surface unchanged.
    if error.name not in ("llama_index", "llama_index.core"):
        raise
    raise ImportError(
        "crag_integrations.llama_index needs llama-index-core, which is not installed. "
        'Install it with: pip install "crag-integrations[llama-index]"'
    ) from error

from crag_integrations.llama_index.postprocessors import (
    METADATA_KEYS,
    CragEvaluatedNodes,
    CragEvaluatorPostprocessor,
    CragNodes,
    CragPostprocessor,
    CrossEncoderRerank,
    DroppedNode,
    EvidenceTrimmer,
    KnowledgeRefinerTrimmer,
    NodeDropReason,
    RefinedNodes,
    RelevanceFilter,
)

__all__ = [
    "METADATA_KEYS",
    "CragEvaluatedNodes",
    "CragEvaluatorPostprocessor",
    "CragNodes",
    "CragPostprocessor",
    "CrossEncoderRerank",
    "DroppedNode",
    "EvidenceTrimmer",
    "KnowledgeRefinerTrimmer",
    "NodeDropReason",
    "RefinedNodes",
    "RelevanceFilter",
]
