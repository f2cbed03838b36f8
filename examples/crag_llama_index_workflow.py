"""Corrective RAG as a LlamaIndex Workflow, graded by one batched cross-encoder call.

The same agent as ``examples/crag_langgraph.py``, as event-driven async steps::

    StartEvent -> retrieve -> GradeEvent -> grade --correct/ambiguous--> RefineEvent
    RefineEvent -> refine --correct--> GenerateEvent | --ambiguous--> RewriteEvent
    grade --incorrect--> RewriteEvent -> rewrite -> WebSearchEvent -> web_search
    web_search -> GenerateEvent -> generate -> StopEvent

``grade`` scores every retrieved node with one :class:`~crag_integrations.crag.CragEvaluator`
call; ``refine`` and ``web_search`` keep relevant strips with one
:class:`~crag_integrations.crag.KnowledgeRefiner` call each. Parts are injected, so the
workflow runs with a real LLM, retriever and search (see docs/crag.md) or offline::

    python examples/crag_llama_index_workflow.py --demo

``--demo`` uses tiny *randomly initialised* checkpoints and ``MockLLM``: its scores,
actions and answers are MEANINGLESS. Needs llama-index-core >= 0.14
(``pip install "crag-integrations[llama-index]"``).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.llms import LLM
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.workflow import Context, Event, StartEvent, StopEvent, Workflow, step

from crag_integrations.crag import CragEvaluator, KnowledgeRefiner

__all__ = ["CragWorkflow", "build_crag_workflow"]

REWRITE_PROMPT = (
    "Rewrite the question below into a short web-search query that would find the facts "
    "needed to answer it. Reply with the query only.\n\nQuestion: {question}"
)
ANSWER_PROMPT = (
    "Answer the question using only the context. If the context does not contain the "
    "answer, say so.\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:"
)

#: A web search: query in, texts out (sync or async), e.g. a wrapper around Tavily.
WebSearch = Callable[[str], "Sequence[str] | Awaitable[Sequence[str]]"]


class GradeEvent(Event):
    """Retrieved nodes, to be graded."""

    nodes: list[NodeWithScore]


class RefineEvent(Event):
    """Graded nodes whose relevant strips should be kept."""

    nodes: list[NodeWithScore]


class RewriteEvent(Event):
    """The question needs a web search."""


class WebSearchEvent(Event):
    """A rewritten query to search the web with."""

    query: str


class GenerateEvent(Event):
    """All knowledge is gathered; write the answer."""


class CragWorkflow(Workflow):
    """Corrective RAG: retrieve, grade in one call, branch on the action, refine, answer.

    The result of ``await workflow.run(question=...)`` is a dict with ``question``,
    ``action``, ``scores``, ``nodes`` (copies carrying ``relevance_score``,
    ``crag_action`` and ``crag_document_action`` metadata), ``refined_context``,
    ``web_query``, ``web_context``, ``answer`` and ``steps`` (the steps taken, in order).

    Args:
        retriever: A LlamaIndex retriever.
        llm: Rewrites the question for web search and writes the answer.
        web_search: Query in, texts out; sync or async.
        evaluator: Grades all retrieved nodes in one call and decides the action.
        refiner: Keeps the relevant strips of retrieved and web texts.
        **kwargs: Passed to :class:`~llama_index.core.workflow.Workflow` (e.g. timeout).

    Example:
        >>> workflow = CragWorkflow(retriever=retriever, llm=llm,  # doctest: +SKIP
        ...     web_search=search, evaluator=evaluator, refiner=refiner, timeout=60)
        >>> (await workflow.run(question="What causes rain?"))["action"]  # doctest: +SKIP
        'correct'
    """

    def __init__(
        self,
        *,
        retriever: BaseRetriever,
        llm: LLM,
        web_search: WebSearch,
        evaluator: CragEvaluator,
        refiner: KnowledgeRefiner,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retriever = retriever
        self.llm = llm
        self.web_search = web_search
        self.evaluator = evaluator
        self.refiner = refiner

    @staticmethod
    async def _record(ctx: Context, **values: Any) -> None:
        for key, value in values.items():
            await ctx.store.set(key, value)

    @staticmethod
    async def _step(ctx: Context, name: str) -> None:
        steps = await ctx.store.get("steps", default=[])
        await ctx.store.set("steps", [*steps, name])

    @step
    async def retrieve(self, ctx: Context, ev: StartEvent) -> GradeEvent:
        """Retrieve nodes for the question."""
        question = str(ev.question)
        await self._record(ctx, question=question, refined_context=[], web_context=[])
        await self._step(ctx, "retrieve")
        nodes = await self.retriever.aretrieve(QueryBundle(question))
        return GradeEvent(nodes=list(nodes))

    @step
    async def grade(self, ctx: Context, ev: GradeEvent) -> RefineEvent | RewriteEvent:
        """Grade every node in one evaluator call; incorrect goes straight to the web."""
        question = await ctx.store.get("question")
        evaluation = await self.evaluator.aevaluate(
            question, [n.node.get_content() for n in ev.nodes]
        )
        graded = [
            NodeWithScore(
                node=n.node.model_copy(
                    update={
                        "metadata": {
                            **n.node.metadata,
                            "relevance_score": s,
                            "crag_action": evaluation.action,
                            "crag_document_action": band,
                        }
                    }
                ),
                score=s,
            )
            for n, band, s in zip(
                ev.nodes, evaluation.document_actions, evaluation.scores, strict=True
            )
        ]
        await self._record(
            ctx, action=evaluation.action, scores=list(evaluation.scores), nodes=graded
        )
        await self._step(ctx, "grade")
        if evaluation.action == "incorrect":
            return RewriteEvent()
        return RefineEvent(nodes=graded)

    @step
    async def refine(self, ctx: Context, ev: RefineEvent) -> GenerateEvent | RewriteEvent:
        """Keep the relevant strips; ambiguous retrieval also searches the web."""
        question = await ctx.store.get("question")
        refined = await self.refiner.arefine(question, [n.node.get_content() for n in ev.nodes])
        await self._record(ctx, refined_context=[d.refined_text for d in refined if d.refined_text])
        await self._step(ctx, "refine")
        if await ctx.store.get("action") == "ambiguous":
            return RewriteEvent()
        return GenerateEvent()

    @step
    async def rewrite(self, ctx: Context, ev: RewriteEvent) -> WebSearchEvent:
        """Rewrite the question into a web-search query with the LLM."""
        question = await ctx.store.get("question")
        reply = await self.llm.acomplete(REWRITE_PROMPT.format(question=question))
        query = reply.text.strip() or question
        await self._record(ctx, web_query=query)
        await self._step(ctx, "rewrite")
        return WebSearchEvent(query=query)

    @step
    async def search(self, ctx: Context, ev: WebSearchEvent) -> GenerateEvent:
        """Search the web and keep the relevant strips of the results."""
        question = await ctx.store.get("question")
        found = self.web_search(ev.query)
        texts = list(await found if inspect.isawaitable(found) else found)
        refined = await self.refiner.arefine(question, texts)
        await self._record(ctx, web_context=[d.refined_text for d in refined if d.refined_text])
        await self._step(ctx, "web_search")
        return GenerateEvent()

    @step
    async def generate(self, ctx: Context, ev: GenerateEvent) -> StopEvent:
        """Answer from the refined internal and external knowledge."""
        question = await ctx.store.get("question")
        context = [
            *await ctx.store.get("refined_context"),
            *await ctx.store.get("web_context"),
        ]
        prompt = ANSWER_PROMPT.format(context="\n\n".join(context) or "(none)", question=question)
        answer = (await self.llm.acomplete(prompt)).text
        await self._step(ctx, "generate")
        keys = ("question", "action", "scores", "nodes", "refined_context", "web_context")
        result = {key: await ctx.store.get(key, default=None) for key in keys}
        result["web_query"] = await ctx.store.get("web_query", default=None)
        result["steps"] = await ctx.store.get("steps")
        result["answer"] = answer
        return StopEvent(result=result)


def build_crag_workflow(
    *,
    retriever: BaseRetriever,
    llm: LLM,
    web_search: WebSearch,
    evaluator: CragEvaluator,
    refiner: KnowledgeRefiner,
    timeout: float | None = 120.0,
) -> CragWorkflow:
    """Build the corrective-RAG workflow from injectable parts (see :class:`CragWorkflow`)."""
    return CragWorkflow(
        retriever=retriever,
        llm=llm,
        web_search=web_search,
        evaluator=evaluator,
        refiner=refiner,
        timeout=timeout,
    )


# --------------------------------------------------------------------------------------
# Command line: --demo (tiny random models, MockLLM, stub search)

CORPUS = [
    "Rain forms when water vapor in the atmosphere condenses into droplets. "
    "The droplets grow until they fall.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]
WEB_RESULTS = ["Rain is liquid water falling from clouds.", "Clouds are droplets. They drift."]


class FixedRetriever(BaseRetriever):
    """Returns the same nodes for every query (an offline stand-in for a vector index)."""

    def __init__(self, texts: Sequence[str]) -> None:
        super().__init__()
        self._texts = list(texts)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [
            NodeWithScore(node=TextNode(text=t, id_=f"doc-{i}"), score=None)
            for i, t in enumerate(self._texts)
        ]


def stub_web_search(query: str) -> list[str]:
    """Pretend web search: always the same two results."""
    return list(WEB_RESULTS)


async def _demo(question: str, model_dir: Path, evaluator_model: str | None) -> dict[str, Any]:
    from llama_index.core.llms import MockLLM

    from crag_integrations.testing import save_tiny_checkpoint

    model = evaluator_model or str(save_tiny_checkpoint(model_dir / "tiny-rerank", num_labels=1))
    workflow = build_crag_workflow(
        retriever=FixedRetriever(CORPUS),
        llm=MockLLM(max_tokens=8),
        web_search=stub_web_search,
        evaluator=CragEvaluator(model=model),
        refiner=KnowledgeRefiner(model=model, threshold=None, top_k=2),
    )
    result: dict[str, Any] = await workflow.run(question=question)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Run the workflow once and print what each step decided."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="tiny random models (meaningless)")
    parser.add_argument("--evaluator-model", help="reranker/grader path or hub id")
    parser.add_argument("--question", default="What causes rain?")
    args = parser.parse_args(argv)
    if not args.demo and not args.evaluator_model:
        parser.error("pass --demo, or --evaluator-model with a real reranker or grader")
    if args.demo:
        print("DEMO: tiny RANDOM models, MockLLM and stub search; results are MEANINGLESS.")
    with tempfile.TemporaryDirectory() as tmp:
        state = asyncio.run(_demo(args.question, Path(tmp), args.evaluator_model))
    print(f"steps:   {' -> '.join(state['steps'])}")
    print(f"action:  {state['action']}  scores: {[round(s, 3) for s in state['scores']]}")
    print(f"refined: {state['refined_context']}")
    print(f"web:     {state['web_context']}")
    print(f"answer:  {state['answer']!r}")


if __name__ == "__main__":
    main()
