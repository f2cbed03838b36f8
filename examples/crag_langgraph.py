"""Corrective RAG as a LangGraph agent, graded by one batched cross-encoder call.

The graph (after Yan et al., 2024, and the LangGraph CRAG tutorial)::

    retrieve -> grade --correct---> refine ----------------------------> generate
                      \\--ambiguous-> refine -> rewrite -> web_search ---> generate
                       \\-incorrect-------------> rewrite -> web_search -> generate

Unlike the tutorial, which asks the LLM to grade each retrieved document in its own call,
``grade`` scores *all* documents with one :class:`~crag_integrations.crag.CragEvaluator`
call (one batched forward pass through a cross-encoder), and ``refine`` keeps only the
relevant strips of the documents with one :class:`~crag_integrations.crag.KnowledgeRefiner`
call. Web results are refined the same way, as in the paper.

Every part is injected, so the same graph runs with a real LLM, retriever and search tool
(see docs/crag.md) or offline in tests with fakes::

    python examples/crag_langgraph.py --demo
    python examples/crag_langgraph.py --evaluator-model PATH_OR_HUB_ID --question "..."

``--demo`` builds tiny *randomly initialised* checkpoints: its scores, actions and answers
are MEANINGLESS and only show the plumbing. Needs ``pip install "crag-integrations[langgraph]"``.
"""

from __future__ import annotations

import argparse
import operator
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph

from crag_integrations.crag import CragAction, CragEvaluator, KnowledgeRefiner

__all__ = ["CragState", "build_crag_graph", "search_results_to_texts"]

REWRITE_PROMPT = (
    "Rewrite the question below into a short web-search query that would find the facts "
    "needed to answer it. Reply with the query only.\n\nQuestion: {question}"
)
ANSWER_PROMPT = (
    "Answer the question using only the context. If the context does not contain the "
    "answer, say so.\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:"
)


class CragState(TypedDict, total=False):
    """What flows through the graph; every key a node writes is listed here.

    Attributes:
        question: The user's question (input).
        documents: Retrieved documents, copied with ``relevance_score``, ``crag_action``
            (the query's action) and ``crag_document_action`` (the document's own band) in
            their metadata, the keys the LangChain adapter writes.
        action: The query's CRAG action: ``correct``, ``ambiguous`` or ``incorrect``.
        scores: Each retrieved document's relevance score, in retrieval order.
        refined_context: Relevant strips of the retrieved documents (correct/ambiguous).
        web_query: The LLM's rewrite of the question (ambiguous/incorrect).
        web_context: Relevant strips of the web results (ambiguous/incorrect).
        generation: The final answer.
        steps: The nodes visited, in order.
    """

    question: str
    documents: list[Document]
    action: CragAction
    scores: list[float]
    refined_context: list[str]
    web_query: str
    web_context: list[str]
    generation: str
    steps: Annotated[list[str], operator.add]


def search_results_to_texts(results: Any) -> list[str]:
    """Texts from what common search tools return.

    Accepts a string, a ``Document``, a dict with ``content``/``page_content``/``snippet``
    or with a ``results`` list (Tavily's shape), or a list of any of these.

    Example:
        >>> search_results_to_texts({"results": [{"url": "u", "content": "Rain is water."}]})
        ['Rain is water.']
    """
    if results is None:
        return []
    if isinstance(results, str):
        return [results] if results.strip() else []
    if isinstance(results, Document):
        return search_results_to_texts(results.page_content)
    if isinstance(results, dict):
        if "results" in results:
            return search_results_to_texts(results["results"])
        for key in ("content", "page_content", "snippet", "text"):
            if key in results:
                return search_results_to_texts(results[key])
        return []
    if isinstance(results, Sequence):
        return [text for item in results for text in search_results_to_texts(item)]
    raise TypeError(f"cannot read search results of type {type(results).__name__}")


def _message_text(message: BaseMessage | str) -> str:
    if isinstance(message, str):
        return message
    return message.text if isinstance(message.text, str) else str(message.content)


def build_crag_graph(
    *,
    retriever: Runnable[str, list[Document]],
    chat_model: BaseChatModel,
    web_search: BaseTool,
    evaluator: CragEvaluator,
    refiner: KnowledgeRefiner,
) -> Any:
    """Build and compile the corrective-RAG graph from injectable parts.

    Args:
        retriever: Any runnable from a question to documents (a LangChain retriever).
        chat_model: Rewrites the question for web search and writes the answer.
        web_search: A tool taking ``{"query": ...}`` (e.g. Tavily's); see
            :func:`search_results_to_texts` for the result shapes it may return.
        evaluator: Grades all retrieved documents in one call and decides the action.
        refiner: Keeps the relevant strips of retrieved and web documents.

    Returns:
        A compiled LangGraph graph; ``graph.invoke({"question": ...})`` returns the final
        :class:`CragState`.

    Example:
        >>> graph = build_crag_graph(retriever=retriever, chat_model=llm,  # doctest: +SKIP
        ...     web_search=tavily, evaluator=evaluator, refiner=refiner)
        >>> graph.invoke({"question": "What causes rain?"})["action"]  # doctest: +SKIP
        'correct'
    """

    def retrieve(state: CragState) -> CragState:
        documents = list(retriever.invoke(state["question"]))
        return {"documents": documents, "steps": ["retrieve"]}

    def grade(state: CragState) -> CragState:
        documents = state.get("documents", [])
        evaluation = evaluator.evaluate(state["question"], [d.page_content for d in documents])
        graded = [
            doc.model_copy(
                update={
                    "metadata": {
                        **doc.metadata,
                        "relevance_score": s,
                        "crag_action": evaluation.action,
                        "crag_document_action": band,
                    }
                }
            )
            for doc, band, s in zip(
                documents, evaluation.document_actions, evaluation.scores, strict=True
            )
        ]
        return {
            "documents": graded,
            "action": evaluation.action,
            "scores": list(evaluation.scores),
            "steps": ["grade"],
        }

    def refine(state: CragState) -> CragState:
        texts = [d.page_content for d in state.get("documents", [])]
        refined = refiner.refine(state["question"], texts)
        return {
            "refined_context": [d.refined_text for d in refined if d.refined_text],
            "steps": ["refine"],
        }

    def rewrite(state: CragState) -> CragState:
        reply = chat_model.invoke(REWRITE_PROMPT.format(question=state["question"]))
        query = _message_text(reply).strip() or state["question"]
        return {"web_query": query, "steps": ["rewrite"]}

    def search(state: CragState) -> CragState:
        texts = search_results_to_texts(web_search.invoke({"query": state["web_query"]}))
        refined = refiner.refine(state["question"], texts)
        return {
            "web_context": [d.refined_text for d in refined if d.refined_text],
            "steps": ["web_search"],
        }

    def generate(state: CragState) -> CragState:
        context = [*state.get("refined_context", []), *state.get("web_context", [])]
        prompt = ANSWER_PROMPT.format(
            context="\n\n".join(context) or "(none)", question=state["question"]
        )
        return {"generation": _message_text(chat_model.invoke(prompt)), "steps": ["generate"]}

    def after_grade(state: CragState) -> str:
        return "rewrite" if state["action"] == "incorrect" else "refine"

    def after_refine(state: CragState) -> str:
        return "rewrite" if state["action"] == "ambiguous" else "generate"

    graph = StateGraph(CragState)
    graph.add_node("retrieve", retrieve)
    graph.add_node("grade", grade)
    graph.add_node("refine", refine)
    graph.add_node("rewrite", rewrite)
    graph.add_node("web_search", search)
    graph.add_node("generate", generate)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "grade")
    graph.add_conditional_edges("grade", after_grade, ["refine", "rewrite"])
    graph.add_conditional_edges("refine", after_refine, ["rewrite", "generate"])
    graph.add_edge("rewrite", "web_search")
    graph.add_edge("web_search", "generate")
    graph.add_edge("generate", END)
    return graph.compile()


# --------------------------------------------------------------------------------------
# Command line: --demo (tiny random models, fake LLM, stub search) or a real evaluator

CORPUS = [
    "Rain forms when water vapor in the atmosphere condenses into droplets. "
    "The droplets grow until they fall.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]
WEB_RESULTS = {
    "results": [
        {"url": "https://example.org/rain", "content": "Rain is liquid water falling from clouds."},
        {"url": "https://example.org/clouds", "content": "Clouds are droplets. They drift."},
    ]
}


def demo_parts(
    model_dir: Path, *, upper: float, lower: float
) -> tuple[Runnable[str, list[Document]], BaseChatModel, BaseTool, CragEvaluator, KnowledgeRefiner]:
    """Offline parts: a tiny random reranker, a fake chat model, a stub search tool."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.runnables import RunnableLambda
    from langchain_core.tools import tool

    from crag_integrations.testing import save_tiny_checkpoint

    model = str(save_tiny_checkpoint(model_dir / "tiny-rerank", num_labels=1, seed=0))

    @tool
    def stub_web_search(query: str) -> dict[str, Any]:
        """Pretend web search: always returns the same two results."""
        return WEB_RESULTS

    def retrieve(question: str) -> list[Document]:
        return [Document(page_content=t, metadata={"id": i}) for i, t in enumerate(CORPUS)]

    retriever: Runnable[str, list[Document]] = RunnableLambda(retrieve)
    llm = FakeListChatModel(responses=["why does it rain", "(fake LLM answer)"])
    return (
        retriever,
        llm,
        stub_web_search,
        CragEvaluator(model=model, upper=upper, lower=lower),
        KnowledgeRefiner(model=model, threshold=None, top_k=2),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the agent once and print what each step decided."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="tiny random models (meaningless)")
    parser.add_argument("--evaluator-model", help="reranker/grader path or hub id")
    parser.add_argument("--question", default="What causes rain?")
    parser.add_argument("--upper", type=float, default=None)
    parser.add_argument("--lower", type=float, default=None)
    args = parser.parse_args(argv)
    if not args.demo and not args.evaluator_model:
        parser.error("pass --demo, or --evaluator-model with a real reranker or grader")
    with tempfile.TemporaryDirectory() as tmp:
        retriever, llm, search, evaluator, refiner = demo_parts(
            Path(tmp),
            upper=0.6 if args.upper is None else args.upper,
            lower=0.2 if args.lower is None else args.lower,
        )
        if args.demo:
            print("DEMO: tiny RANDOM models, a fake LLM and stub search; results are MEANINGLESS.")
        else:
            evaluator = CragEvaluator(
                model=args.evaluator_model,
                upper=evaluator.upper if args.upper is None else args.upper,
                lower=evaluator.lower if args.lower is None else args.lower,
            )
            refiner = KnowledgeRefiner(model=args.evaluator_model, threshold=0.5)
            print("Real evaluator; the LLM and web search are still offline stand-ins.")
        graph = build_crag_graph(
            retriever=retriever,
            chat_model=llm,
            web_search=search,
            evaluator=evaluator,
            refiner=refiner,
        )
        state = graph.invoke({"question": args.question})
    print(f"steps:   {' -> '.join(state['steps'])}")
    print(f"action:  {state['action']}  scores: {[round(s, 3) for s in state['scores']]}")
    print(f"refined: {state.get('refined_context', [])}")
    print(f"web:     {state.get('web_context', [])}")
    print(f"answer:  {state['generation']}")


if __name__ == "__main__":
    main()
