"""Rerank, filter and trim the nodes of a LlamaIndex query engine; branch on the CRAG action.

Runs fully offline with ``--demo``: tiny, randomly initialised checkpoints are built in a
temporary directory. Their scores are MEANINGLESS; the demo only shows the plumbing (which
node ids come back, their scores, the metadata written, the trimmed text).

With real models, give hub ids or local directories::

    python examples/llama_index_query.py \\
        --reranker cross-encoder/ms-marco-MiniLM-L6-v2 \\
        --grader skshmjn/CRAG-ModernBert \\
        --highlighter KRLabsOrg/acl-verbatim-modernbert

The index uses LlamaIndex's ``MockEmbedding`` and the answer comes from ``MockLLM`` so that
nothing else needs a network or an API key; swap in your own ``embed_model`` and ``llm``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import NodeWithScore, TextNode

from crag_integrations.llama_index import (
    CragEvaluatorPostprocessor,
    CragPostprocessor,
    CrossEncoderRerank,
    EvidenceTrimmer,
    KnowledgeRefinerTrimmer,
    RelevanceFilter,
)

PASSAGES = (
    "Rain forms when water vapor in the atmosphere condenses into droplets that grow "
    "heavy enough to fall.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Climate change affects urban infrastructure, water resources and public health.",
    "The capital of Japan is Tokyo, which is also its largest city.",
)


def demo_models(directory: Path) -> tuple[str, str, str]:
    """Build the three tiny random checkpoints the demo runs on."""
    from crag_integrations.testing import save_tiny_checkpoint

    reranker = save_tiny_checkpoint(directory / "rerank", num_labels=1)
    grader = save_tiny_checkpoint(
        directory / "grader", num_labels=2, id2label={0: "not_relevant", 1: "relevant"}
    )
    highlighter = save_tiny_checkpoint(directory / "token", head="token", num_labels=2)
    return str(reranker), str(grader), str(highlighter)


def run(
    query: str,
    reranker: str | None,
    grader: str | None,
    highlighter: str | None,
    device: str = "auto",
) -> None:
    """Query a small in-memory index through the CRAG postprocessor, sync and async."""
    nodes = [TextNode(id_=f"passage-{i}", text=text) for i, text in enumerate(PASSAGES)]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    # One nested stage per model, configured as the single-stage postprocessor would be.
    crag = CragPostprocessor(
        reranker=CrossEncoderRerank(model=reranker, top_n=3, device=device) if reranker else None,
        relevance_filter=RelevanceFilter(model=grader, threshold=0.5, device=device)
        if grader
        else None,
        trimmer=EvidenceTrimmer(model=highlighter, min_span_chars=5, device=device)
        if highlighter
        else None,
        # The CRAG action needs relevance scores: a reranker or a grader.
        action_upper=0.6 if (reranker or grader) else None,
        action_lower=0.2 if (reranker or grader) else None,
    )
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=len(PASSAGES), node_postprocessors=[crag]
    )

    response = engine.query(query)
    print(f"query: {query!r}\n{len(response.source_nodes)} node(s) reached the LLM:")
    for node in response.source_nodes:
        crag_keys = {k: v for k, v in node.metadata.items() if k.startswith("crag_")}
        print(f"- {node.node_id}  score={node.score:.3f}  text={node.text!r}")
        print(f"    {crag_keys}")

    # The same through the async path (awaits the shared engine, no thread per call), and
    # process() to see what was dropped and why.
    asyncio.run(engine.aquery(query))
    retrieved = index.as_retriever(similarity_top_k=len(PASSAGES)).retrieve(query)
    processed = crag.process(retrieved, query_str=query)
    for dropped in processed.dropped:
        print(f"dropped {dropped.node.node_id}: {dropped.reason}")
    print(f"CRAG action decided by CragPostprocessor: {processed.action}")

    scorer = grader or reranker
    if scorer is not None:
        branch_on_action(query, retrieved, scorer, device)


def branch_on_action(
    query: str, retrieved: list[NodeWithScore], scorer: str, device: str = "auto"
) -> None:
    """The CRAG evaluator's action, then knowledge refinement, as an agent would branch."""
    evaluator = CragEvaluatorPostprocessor(model=scorer, upper=0.6, lower=0.2, device=device)
    refiner = KnowledgeRefinerTrimmer(model=scorer, threshold=0.5, device=device)
    graded = evaluator.process(retrieved, query_str=query)
    print(f"CRAG evaluator: action={graded.action}")
    for node in graded.kept:
        band = node.metadata["crag_document_action"]
        print(f"- {node.node_id}  score={node.score:.3f}  band={band}")
    if graded.action == "incorrect":
        print("-> incorrect: discard retrieval and search the web (not part of this demo)")
        return
    if graded.action == "ambiguous":
        print("-> ambiguous: refine retrieval and add web results (web not part of this demo)")
    for node in refiner.postprocess_nodes(graded.kept, query_str=query):
        strips = node.metadata["crag_strips"]
        total = node.metadata["crag_num_strips"]
        kept = repr(node.text) if strips else "none (on_no_evidence='keep': text kept whole)"
        print(f"  refined {node.node_id}: {len(strips)}/{total} strip(s) kept: {kept}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="use tiny random checkpoints")
    parser.add_argument("--reranker", help="one-logit cross-encoder (hub id or path)")
    parser.add_argument("--grader", help="relevance classifier (hub id or path)")
    parser.add_argument("--highlighter", help="token classifier (hub id or path)")
    parser.add_argument("--query", default="What causes rain?")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'mps', ...")
    args = parser.parse_args()

    if args.demo:
        print("=" * 78)
        print("DEMO MODE: tiny RANDOMLY INITIALISED models. Every score below is MEANINGLESS;")
        print("this only shows the plumbing. Pass --reranker/--grader/--highlighter for real.")
        print("=" * 78)
        with tempfile.TemporaryDirectory() as tmp:
            run(args.query, *demo_models(Path(tmp)), device=args.device)
        return
    if not (args.reranker or args.grader or args.highlighter):
        parser.error("give --demo, or at least one of --reranker, --grader, --highlighter")
    run(args.query, args.reranker, args.grader, args.highlighter, device=args.device)


if __name__ == "__main__":
    main()
