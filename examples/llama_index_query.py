"""Rerank, filter and trim the nodes of a LlamaIndex query engine.

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
from llama_index.core.schema import TextNode

from crag_integrations.llama_index import CragPostprocessor

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


def run(query: str, reranker: str | None, grader: str | None, highlighter: str | None) -> None:
    """Query a small in-memory index through the CRAG postprocessor, sync and async."""
    nodes = [TextNode(id_=f"passage-{i}", text=text) for i, text in enumerate(PASSAGES)]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    crag = CragPostprocessor(
        reranker_model=reranker,
        grader_model=grader,
        highlighter_model=highlighter,
        top_n=3,
        relevance_threshold=0.5,
        min_span_chars=5,
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
    for dropped in crag.process(retrieved, query_str=query).dropped:
        print(f"dropped {dropped.node.node_id}: {dropped.reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="use tiny random checkpoints")
    parser.add_argument("--reranker", help="one-logit cross-encoder (hub id or path)")
    parser.add_argument("--grader", help="relevance classifier (hub id or path)")
    parser.add_argument("--highlighter", help="token classifier (hub id or path)")
    parser.add_argument("--query", default="What causes rain?")
    args = parser.parse_args()

    if args.demo:
        print("=" * 78)
        print("DEMO MODE: tiny RANDOMLY INITIALISED models. Every score below is MEANINGLESS;")
        print("this only shows the plumbing. Pass --reranker/--grader/--highlighter for real.")
        print("=" * 78)
        with tempfile.TemporaryDirectory() as tmp:
            run(args.query, *demo_models(Path(tmp)))
        return
    if not (args.reranker or args.grader or args.highlighter):
        parser.error("give --demo, or at least one of --reranker, --grader, --highlighter")
    run(args.query, args.reranker, args.grader, args.highlighter)


if __name__ == "__main__":
    main()
