"""Rerank, filter and trim LangChain retrieval results with crag_integrations.

Runs fully offline with ``--demo`` (tiny random checkpoints built into a temporary
directory: the pipeline runs for real, but the scores are MEANINGLESS), or with real
checkpoints given as local directories or hub ids::

    python examples/langchain_retrieval.py --demo
    python examples/langchain_retrieval.py \\
        --reranker cross-encoder/ms-marco-MiniLM-L6-v2 \\
        --grader skshmjn/CRAG-ModernBert \\
        --highlighter KRLabsOrg/acl-verbatim-modernbert

Needs ``pip install "crag-integrations[langchain]" langchain-classic``. Retrieval uses
LangChain's ``DeterministicFakeEmbedding`` so that no embedding model is needed: the
first-stage ranking is arbitrary, which is exactly what a reranker is there to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID

PASSAGES = (
    "Rain forms when water vapor in the atmosphere condenses into droplets that fall.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Climate change affects urban infrastructure, water resources and public health.",
    "The capital of Japan is Tokyo, which is also its largest city.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Clouds are made of droplets; when droplets grow heavy enough they fall as rain.",
)


def _demo_checkpoints(root: Path) -> tuple[str, str, str]:
    from crag_integrations.testing import save_tiny_checkpoint

    reranker = save_tiny_checkpoint(root / "rerank", architecture="bert", num_labels=1, seed=0)
    grader = save_tiny_checkpoint(
        root / "grader",
        architecture="bert",
        num_labels=2,
        id2label={0: "not_relevant", 1: "relevant"},
        seed=1,
    )
    highlighter = save_tiny_checkpoint(
        root / "highlighter", architecture="bert", head="token", num_labels=2, seed=2
    )
    return str(reranker), str(grader), str(highlighter)


def main(argv: list[str] | None = None) -> int:
    """Build a compressing retriever, run it sync and async, print what it kept."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--demo", action="store_true", help="use tiny random checkpoints")
    parser.add_argument("--reranker", help="one-logit cross-encoder (dir or hub id)")
    parser.add_argument("--grader", help="relevance classifier (dir or hub id)")
    parser.add_argument("--highlighter", help="token evidence classifier (dir or hub id)")
    parser.add_argument("--query", default="what causes rain?")
    parser.add_argument("--top-n", type=int, default=3, help="documents the reranker keeps")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'mps', ...")
    parser.add_argument(
        "--action-upper",
        type=float,
        default=0.6,
        help="relevance probability at or above which one document makes the action correct",
    )
    parser.add_argument(
        "--action-lower",
        type=float,
        default=0.2,
        help="relevance probability below which all documents must fall for incorrect",
    )
    parser.add_argument(
        "--grade-threshold",
        type=float,
        default=None,
        help="grader relevance probability cut-off (default 0.5; 0.2 in --demo so that "
        "something survives the random grader)",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from langchain_classic.retrievers import ContextualCompressionRetriever
    except ModuleNotFoundError:
        print("This example needs langchain-classic: pip install langchain-classic")
        return 2
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from crag_integrations.langchain import (
        COMPRESSION_EVENT,
        CragCompressor,
        CrossEncoderRerank,
        EvidenceTrimmer,
        RelevanceFilter,
    )

    class PrintEvents(BaseCallbackHandler):
        def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
            if name == COMPRESSION_EVENT:
                print(f"  [event] {data}")

    workdir = tempfile.TemporaryDirectory(prefix="crag-demo-")
    if args.demo:
        print("=" * 78)
        print("DEMO MODE: tiny RANDOMLY INITIALISED checkpoints. Every score, label and")
        print("span below is MEANINGLESS; only the plumbing is real. Pass --reranker,")
        print("--grader and --highlighter for real models.")
        print("=" * 78)
        reranker, grader, highlighter = _demo_checkpoints(Path(workdir.name))
    else:
        if not (args.reranker or args.grader or args.highlighter):
            parser.error("pass --demo, or at least one of --reranker/--grader/--highlighter")
        reranker, grader, highlighter = args.reranker, args.grader, args.highlighter

    grade_threshold = args.grade_threshold
    if grade_threshold is None:
        grade_threshold = 0.2 if args.demo else 0.5
    # The CRAG action needs relevance scores: a reranker or a grader (not a highlighter alone).
    scored = bool(reranker or grader)
    device = args.device
    # One nested stage per model, configured as the single-stage compressor would be.
    compressor = CragCompressor(
        reranker=CrossEncoderRerank(model=reranker, top_n=args.top_n, device=device)
        if reranker
        else None,
        relevance_filter=RelevanceFilter(model=grader, threshold=grade_threshold, device=device)
        if grader
        else None,
        trimmer=EvidenceTrimmer(model=highlighter, on_no_evidence="keep", device=device)
        if highlighter
        else None,
        action_upper=args.action_upper if scored else None,
        action_lower=args.action_lower if scored else None,
    )
    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=64))
    store.add_documents(
        [
            Document(page_content=text, metadata={"source": f"passage-{i}"}, id=str(i))
            for i, text in enumerate(PASSAGES)
        ]
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor,
        base_retriever=store.as_retriever(search_kwargs={"k": len(PASSAGES)}),
    )

    print(f"query: {args.query!r}")
    docs = retriever.invoke(args.query, config={"callbacks": [PrintEvents()]})
    for doc in docs:
        md = doc.metadata
        score = md.get("relevance_score")
        shown = f"{score:.3f}" if isinstance(score, float) else "-"
        print(
            f"- {md['source']} relevance_score={shown} label={md.get('crag_label', '-')} "
            f"crag_action={md.get('crag_action', '-')}"
        )
        print(f"    {doc.page_content!r}")
        for span in md.get("crag_spans", []):
            print(f"    span [{span['start']}:{span['end']}] score={span['score']:.2f}")
    async_docs = asyncio.run(retriever.ainvoke(args.query))
    print(f"async result identical: {async_docs == docs}")
    if scored:
        # An agent branches on the action; evaluate_action returns it with the documents,
        # even when no document survives.
        retrieved = retriever.base_retriever.invoke(args.query)
        decided = compressor.evaluate_action(args.query, retrieved)
        next_step = {
            "correct": "refine the retrieved documents",
            "ambiguous": "refine them and also search the web",
            "incorrect": "rewrite the query and search the web",
        }[decided.action]
        print(f"CRAG action: {decided.action} -> {next_step}")
    workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
