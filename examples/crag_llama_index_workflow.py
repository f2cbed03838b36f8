"""Corrective RAG as a LlamaIndex Workflow, graded by one batched cross-encoder call.

The same agent as ``examples/crag_langgraph.py``, as event-driven async steps::

    StartEvent -> retrieve -> GradeEvent -> grade --correct/ambiguous--> RefineEvent
    RefineEvent -> refine --correct--> GenerateEvent | --ambiguous--> RewriteEvent
    grade --incorrect--> RewriteEvent -> rewrite -> WebSearchEvent -> web_search
    web_search -> GenerateEvent -> generate -> StopEvent

``grade`` scores every retrieved node with one
:class:`~crag_integrations.llama_index.CragEvaluatorPostprocessor` call (one batched
cross-encoder pass), which writes the documented ``crag_*`` metadata into copies of the
nodes; ``refine`` and ``web_search`` keep relevant strips with one
:class:`~crag_integrations.crag.KnowledgeRefiner` call each. Parts are injected, so the
workflow runs with a real LLM, retriever and search (see docs/crag.md) or offline, with the
same flags as ``examples/crag_langgraph.py``::

    python examples/crag_llama_index_workflow.py --demo
    python examples/crag_llama_index_workflow.py --evaluator-model PATH_OR_HUB_ID --question "..."

``--demo`` builds a tiny *randomly initialised* checkpoint: its scores, actions and answers
are MEANINGLESS and only show the plumbing. Needs llama-index-core >= 0.14
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
from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms import LLM, CustomLLM
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.workflow import Context, Event, StartEvent, StopEvent, Workflow, step

from crag_integrations.crag import (
    DEFAULT_LOWER,
    DEFAULT_UPPER,
    KnowledgeRefiner,
    knowledge_for_generation,
)
from crag_integrations.llama_index import CragEvaluatorPostprocessor

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
    ``action``, ``scores`` (the graded nodes' relevance scores, in retrieval order),
    ``nodes`` (the evaluator's copies: score = relevance score, and the LlamaIndex adapter's
    documented metadata such as ``crag_action`` and ``crag_document_action``, hidden from
    the LLM; see docs/metadata.md), ``refined_context`` (for a
    ``correct`` action whose refinement keeps no strip: the nodes graded ``correct``,
    whole), ``web_query``, ``web_context``, ``answer`` and ``steps`` (the names of the
    steps taken, in order).

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
        evaluator: CragEvaluatorPostprocessor,
        refiner: KnowledgeRefiner,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retriever = retriever
        self.llm = llm
        self.search_web = web_search  # not "web_search": that is the step's name
        self.evaluator = evaluator
        self.refiner = refiner

    @staticmethod
    async def _record(ctx: Context, **values: Any) -> None:
        for key, value in values.items():
            await ctx.store.set(key, value)

    @staticmethod
    async def _step(ctx: Context, name: str) -> None:
        # ``name`` is the step method's own name, so "steps" reads as the workflow's graph.
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
        graded = await self.evaluator.aprocess(ev.nodes, query_str=question)
        scores = [n.score for n in graded.kept]
        await self._record(ctx, action=graded.action, scores=scores, nodes=graded.kept)
        await self._step(ctx, "grade")
        if graded.action == "incorrect":
            return RewriteEvent()
        return RefineEvent(nodes=graded.kept)

    @step
    async def refine(self, ctx: Context, ev: RefineEvent) -> GenerateEvent | RewriteEvent:
        """Keep the relevant strips; ambiguous retrieval also searches the web."""
        question = await ctx.store.get("question")
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in ev.nodes]
        refined = await self.refiner.arefine(question, texts)
        bands = [n.node.metadata["crag_document_action"] for n in ev.nodes]
        context = knowledge_for_generation(refined, bands, await ctx.store.get("action"))
        await self._record(ctx, refined_context=context)
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
    async def web_search(self, ctx: Context, ev: WebSearchEvent) -> GenerateEvent:
        """Search the web and keep the relevant strips of the results."""
        question = await ctx.store.get("question")
        found = self.search_web(ev.query)
        texts = list(await found if inspect.isawaitable(found) else found)
        refined = await self.refiner.arefine(question, texts)
        await self._record(ctx, web_context=[d.refined_text for d in refined if d.strips])
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
    evaluator: CragEvaluatorPostprocessor,
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
# Command line: the same flags, defaults, parts and output as crag_langgraph.py

CORPUS = [
    "Rain forms when water vapor in the atmosphere condenses into droplets. "
    "The droplets grow until they fall.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]
WEB_RESULTS = ["Rain is liquid water falling from clouds.", "Clouds are droplets. They drift."]
#: The offline stand-in LLM's two canned replies: one to the rewrite prompt, one to the rest.
DEMO_REWRITE = "why does it rain"
DEMO_ANSWER = "(canned answer of the offline stand-in LLM)"
#: Strips the refiner keeps across all documents. No strip threshold: an uncalibrated one
#: (and any one on the demo's random model) can keep nothing.
DEFAULT_TOP_K = 2


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


class CannedLLM(CustomLLM):
    """Offline stand-in LLM: ``rewrite`` for the rewrite prompt, ``answer`` for anything else.

    Keyed on the prompt, not on the call order, so the answer is the answer whichever
    branch the workflow takes (a correct retrieval never asks for a rewrite).
    """

    rewrite: str
    answer: str

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="crag-cookbook-canned")

    def _reply(self, prompt: str) -> str:
        return self.rewrite if prompt.startswith(REWRITE_PROMPT.split("{")[0]) else self.answer

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._reply(prompt))

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        reply = self._reply(prompt)
        yield CompletionResponse(text=reply, delta=reply)


def build_parser() -> argparse.ArgumentParser:
    """The command line, flag for flag the same as the LangGraph cookbook's."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--demo", action="store_true", help="tiny random model (meaningless)")
    model.add_argument(
        "--evaluator-model", help="reranker/grader path or hub id; grades and refines"
    )
    parser.add_argument("--question", default="What causes rain?")
    parser.add_argument(
        "--upper", type=float, default=DEFAULT_UPPER, help="score for 'correct' (%(default)s)"
    )
    parser.add_argument(
        "--lower", type=float, default=DEFAULT_LOWER, help="score for 'incorrect' (%(default)s)"
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help="strips the refiner keeps across all documents (%(default)s)",
    )
    return parser


async def _run(workflow: CragWorkflow, question: str) -> dict[str, Any]:
    # Workflow.run schedules its steps on the running loop, so it is started from inside one.
    result: dict[str, Any] = await workflow.run(question=question)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Run the workflow once and print what each step decided."""
    from crag_integrations.testing import save_tiny_checkpoint

    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            print("DEMO: a tiny RANDOM model, a canned LLM and stub search; MEANINGLESS results.")
            model = str(save_tiny_checkpoint(Path(tmp) / "tiny-rerank", num_labels=1, seed=0))
        else:
            print("Real evaluator; the LLM and web search are still offline stand-ins.")
            model = args.evaluator_model
        workflow = build_crag_workflow(
            retriever=FixedRetriever(CORPUS),
            llm=CannedLLM(rewrite=DEMO_REWRITE, answer=DEMO_ANSWER),
            web_search=stub_web_search,
            evaluator=CragEvaluatorPostprocessor(model=model, upper=args.upper, lower=args.lower),
            refiner=KnowledgeRefiner(model=model, threshold=None, top_k=args.top_k),
        )
        state = asyncio.run(_run(workflow, args.question))
    print(f"steps:   {' -> '.join(state['steps'])}")
    print(f"action:  {state['action']}  scores: {[round(s, 3) for s in state['scores']]}")
    print(f"refined: {state['refined_context']}")
    print(f"web:     {state['web_context']}")
    print(f"answer:  {state['answer']}")


if __name__ == "__main__":
    main()
