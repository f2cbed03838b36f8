"""Corrective RAG as a LangGraph agent, graded by one batched cross-encoder call.

The graph (after Yan et al., 2024, and the LangGraph CRAG tutorial)::

    retrieve -> grade --correct---> refine ----------------------------> generate
                      \\--ambiguous-> refine -> rewrite -> web_search ---> generate
                       \\-incorrect-------------> rewrite -> web_search -> generate

Unlike the tutorial, which asks the LLM to grade each retrieved document in its own call,
``grade`` scores *all* documents with one
:class:`~crag_integrations.langchain.CragEvaluatorCompressor` call (one batched forward pass
through a cross-encoder), which writes the documented metadata into copies of the
documents; ``refine`` keeps only the relevant strips of the documents with one
:class:`~crag_integrations.crag.KnowledgeRefiner` call. Web results are refined the same
way, as in the paper.

Every part is injected, so the same graph runs with a real LLM, retriever and search tool
(see docs/crag.md) or offline in tests with fakes, with the same flags as
``examples/crag_llama_index_workflow.py``::

    python examples/crag_langgraph.py --demo
    python examples/crag_langgraph.py --evaluator-model PATH_OR_HUB_ID --question "..."

``--demo`` builds a tiny *randomly initialised* checkpoint: its scores, actions and answers
are MEANINGLESS and only show the plumbing. Needs ``pip install "crag-integrations[langgraph]"``.
"""

from __future__ import annotations

import argparse
import operator
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph

from crag_integrations.crag import (
    DEFAULT_LOWER,
    DEFAULT_UPPER,
    CragAction,
    KnowledgeRefiner,
    knowledge_for_generation,
)
from crag_integrations.langchain import CragEvaluatorCompressor

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
        documents: The evaluator's copies of the retrieved documents, with the LangChain
            adapter's documented metadata (see docs/metadata.md), such as
            ``relevance_score``, ``crag_action`` (the query's action) and
            ``crag_document_action`` (the document's own band).
        action: The query's CRAG action: ``correct``, ``ambiguous`` or ``incorrect``.
        scores: Each graded document's relevance score, in retrieval order.
        refined_context: Relevant strips of the retrieved documents (correct/ambiguous).
            When a ``correct`` action's refinement keeps no strip, the documents graded
            ``correct``, whole (never an empty context for a correct retrieval).
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
    evaluator: CragEvaluatorCompressor,
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
        graded = list(evaluator.compress_documents(state.get("documents", []), state["question"]))
        # The query's action is on every graded document; none left means "incorrect".
        action: CragAction = graded[0].metadata["crag_action"] if graded else "incorrect"
        return {
            "documents": graded,
            "action": action,
            "scores": [d.metadata["relevance_score"] for d in graded],
            "steps": ["grade"],
        }

    def refine(state: CragState) -> CragState:
        documents = state.get("documents", [])
        refined = refiner.refine(state["question"], [d.page_content for d in documents])
        bands = [d.metadata["crag_document_action"] for d in documents]
        context = knowledge_for_generation(refined, bands, state["action"])
        return {"refined_context": context, "steps": ["refine"]}

    def rewrite(state: CragState) -> CragState:
        reply = chat_model.invoke(REWRITE_PROMPT.format(question=state["question"]))
        query = _message_text(reply).strip() or state["question"]
        return {"web_query": query, "steps": ["rewrite"]}

    def search(state: CragState) -> CragState:
        texts = search_results_to_texts(web_search.invoke({"query": state["web_query"]}))
        refined = refiner.refine(state["question"], texts)
        return {
            "web_context": [d.refined_text for d in refined if d.strips],
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
# Command line: the same flags, defaults, parts and output as crag_llama_index_workflow.py

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
#: The offline stand-in LLM's two canned replies: one to the rewrite prompt, one to the rest.
DEMO_REWRITE = "why does it rain"
DEMO_ANSWER = "(canned answer of the offline stand-in LLM)"
#: Strips the refiner keeps across all documents. No strip threshold: an uncalibrated one
#: (and any one on the demo's random model) can keep nothing.
DEFAULT_TOP_K = 2


class CannedChatModel(BaseChatModel):
    """Offline stand-in LLM: ``rewrite`` for the rewrite prompt, ``answer`` for anything else.

    Keyed on the prompt, not on the call order, so the answer is the answer whichever
    branch the graph takes (a correct retrieval never asks for a rewrite).
    """

    rewrite: str
    answer: str

    @property
    def _llm_type(self) -> str:
        return "crag-cookbook-canned"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        asks_rewrite = _message_text(messages[-1]).startswith(REWRITE_PROMPT.split("{")[0])
        reply = AIMessage(content=self.rewrite if asks_rewrite else self.answer)
        return ChatResult(generations=[ChatGeneration(message=reply)])


def build_parser() -> argparse.ArgumentParser:
    """The command line, flag for flag the same as the LlamaIndex Workflow cookbook's."""
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


def main(argv: Sequence[str] | None = None) -> None:
    """Run the agent once and print what each step decided."""
    from langchain_core.runnables import RunnableLambda
    from langchain_core.tools import tool

    from crag_integrations.testing import save_tiny_checkpoint

    args = build_parser().parse_args(argv)

    @tool
    def stub_web_search(query: str) -> dict[str, Any]:
        """Pretend web search: always returns the same two results."""
        return WEB_RESULTS

    def retrieve(question: str) -> list[Document]:
        return [Document(page_content=t, metadata={"id": i}) for i, t in enumerate(CORPUS)]

    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            print("DEMO: a tiny RANDOM model, a canned LLM and stub search; MEANINGLESS results.")
            model = str(save_tiny_checkpoint(Path(tmp) / "tiny-rerank", num_labels=1, seed=0))
        else:
            print("Real evaluator; the LLM and web search are still offline stand-ins.")
            model = args.evaluator_model
        graph = build_crag_graph(
            retriever=RunnableLambda(retrieve),
            chat_model=CannedChatModel(rewrite=DEMO_REWRITE, answer=DEMO_ANSWER),
            web_search=stub_web_search,
            evaluator=CragEvaluatorCompressor(model=model, upper=args.upper, lower=args.lower),
            refiner=KnowledgeRefiner(model=model, threshold=None, top_k=args.top_k),
        )
        state = graph.invoke({"question": args.question})
    print(f"steps:   {' -> '.join(state['steps'])}")
    print(f"action:  {state['action']}  scores: {[round(s, 3) for s in state['scores']]}")
    print(f"refined: {state.get('refined_context', [])}")
    print(f"web:     {state.get('web_context', [])}")
    print(f"answer:  {state['generation']}")


if __name__ == "__main__":
    main()
