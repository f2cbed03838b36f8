"""The corrective-RAG cookbooks run offline end to end and take each CRAG branch.

Both agents run on the session's tiny reranker with a fake LLM and a stub search tool.
Thresholds are set around the scores the tiny model actually gives (computed here), so
each of the three actions happens deterministically.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("llama_index.core.workflow")

from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from llama_index.core.llms import MockLLM

from crag_integrations.crag import CragEvaluator, KnowledgeRefiner

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUESTION = "What causes rain?"
CORPUS = [
    "Rain forms when water vapor condenses into droplets. The droplets fall.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy. It makes glucose.",
]
WEB = ["Rain is liquid water falling from clouds.", "Clouds are droplets. They drift."]
STEPS = {
    "correct": ["retrieve", "grade", "refine", "generate"],
    "ambiguous": ["retrieve", "grade", "refine", "rewrite", "web_search", "generate"],
    "incorrect": ["retrieve", "grade", "rewrite", "web_search", "generate"],
}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # type hints (TypedDict, pydantic events) resolve through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def langgraph_cookbook() -> ModuleType:
    return _load("crag_langgraph")


@pytest.fixture(scope="module")
def llama_index_cookbook() -> ModuleType:
    return _load("crag_llama_index_workflow")


@pytest.fixture
def model(checkpoints: dict[str, Path]) -> str:
    return str(checkpoints["bert-rerank"])


def _evaluator_for(action: str, model: str) -> CragEvaluator:
    """An evaluator whose thresholds force ``action`` given the tiny model's real scores."""
    scores = CragEvaluator(model=model).evaluate(QUESTION, CORPUS).scores
    low, high = min(scores), max(scores)
    assert 0.0 < low <= high < 1.0
    if action == "correct":
        return CragEvaluator(model=model, upper=high, lower=0.0)
    if action == "ambiguous":
        return CragEvaluator(model=model, upper=math.nextafter(high, 1.0), lower=low)
    return CragEvaluator(model=model, upper=1.0, lower=math.nextafter(high, 1.0))


def _run(workflow: Any) -> dict[str, Any]:
    """Run a workflow to completion (``run`` needs a running event loop)."""

    async def go() -> dict[str, Any]:
        result: dict[str, Any] = await workflow.run(question=QUESTION)
        return result

    return asyncio.run(go())


def _refiner(model: str) -> KnowledgeRefiner:
    return KnowledgeRefiner(model=model, threshold=None, top_k=2)


# --------------------------------------------------------------------------------------
# LangGraph


@pytest.mark.parametrize("action", ["correct", "ambiguous", "incorrect"])
def test_langgraph_agent_takes_the_branch_of_each_action(
    langgraph_cookbook: ModuleType, model: str, action: str
) -> None:
    documents = [Document(page_content=t, metadata={"id": i}) for i, t in enumerate(CORPUS)]
    searched: list[str] = []

    @tool
    def stub_search(query: str) -> dict[str, Any]:
        """Offline web search returning fixed results in Tavily's shape."""
        searched.append(query)
        return {
            "results": [
                {"url": f"https://example.org/{i}", "content": t} for i, t in enumerate(WEB)
            ]
        }

    llm = FakeListChatModel(responses=["rain cause meteorology", "It rains because."])
    graph = langgraph_cookbook.build_crag_graph(
        retriever=RunnableLambda(lambda question: documents),
        chat_model=llm,
        web_search=stub_search,
        evaluator=_evaluator_for(action, model),
        refiner=_refiner(model),
    )
    state = graph.invoke({"question": QUESTION})

    assert state["action"] == action
    assert state["steps"] == STEPS[action]
    assert len(state["scores"]) == len(CORPUS)
    graded = state["documents"]
    assert [d.metadata["relevance_score"] for d in graded] == state["scores"]
    assert all(d.metadata["crag_action"] == action for d in graded)
    assert all(d.metadata["crag_document_action"] in STEPS for d in graded)
    assert all("crag_action" not in d.metadata for d in documents), "caller's docs untouched"
    if action == "incorrect":
        assert "refined_context" not in state
    else:
        assert state["refined_context"]
        assert all(any(s in doc for doc in CORPUS) for s in state["refined_context"])
    if action == "correct":
        assert searched == []
        assert "web_context" not in state
        assert state["generation"] == "rain cause meteorology"  # the only LLM call
    else:
        assert searched == ["rain cause meteorology"]  # the LLM's rewrite was searched
        assert state["web_query"] == "rain cause meteorology"
        assert state["web_context"]
        assert all(any(s in w for w in WEB) for s in state["web_context"])
        assert state["generation"] == "It rains because."


def test_search_results_are_read_from_the_usual_tool_shapes(
    langgraph_cookbook: ModuleType,
) -> None:
    read = langgraph_cookbook.search_results_to_texts
    assert read("a") == ["a"]
    assert read([Document(page_content="b"), {"content": "c"}, {"snippet": "d"}, " "]) == [
        "b",
        "c",
        "d",
    ]
    assert read({"results": [{"url": "u", "content": "e"}]}) == ["e"]
    assert read(None) == []
    with pytest.raises(TypeError, match="int"):
        read(3)


def test_langgraph_demo_runs_offline_and_says_it_is_meaningless(
    langgraph_cookbook: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    langgraph_cookbook.main(["--demo"])
    out = capsys.readouterr().out
    assert "MEANINGLESS" in out
    assert "steps:   retrieve -> grade" in out


# --------------------------------------------------------------------------------------
# LlamaIndex Workflow


@pytest.mark.parametrize("action", ["correct", "ambiguous", "incorrect"])
def test_llama_index_workflow_takes_the_branch_of_each_action(
    llama_index_cookbook: ModuleType, model: str, action: str
) -> None:
    searched: list[str] = []

    async def stub_search(query: str) -> list[str]:
        searched.append(query)
        return list(WEB)

    workflow = llama_index_cookbook.build_crag_workflow(
        retriever=llama_index_cookbook.FixedRetriever(CORPUS),
        llm=MockLLM(),  # echoes its prompt
        web_search=stub_search,
        evaluator=_evaluator_for(action, model),
        refiner=_refiner(model),
        timeout=60,
    )
    result = _run(workflow)

    assert result["action"] == action
    assert result["steps"] == STEPS[action]
    assert [n.score for n in result["nodes"]] == result["scores"]
    assert all(n.node.metadata["crag_action"] == action for n in result["nodes"])
    assert all(n.node.metadata["crag_document_action"] in STEPS for n in result["nodes"])
    assert QUESTION in result["answer"]  # MockLLM echoes the answer prompt
    if action == "incorrect":
        assert result["refined_context"] == []
    else:
        assert result["refined_context"]
        assert all(s in result["answer"] for s in result["refined_context"])
    if action == "correct":
        assert searched == []
        assert result["web_context"] == []
    else:
        assert searched == [result["web_query"]]
        assert QUESTION in result["web_query"]  # the echoed rewrite prompt
        assert result["web_context"]
        assert all(s in result["answer"] for s in result["web_context"])


def test_llama_index_workflow_accepts_a_sync_search_function(
    llama_index_cookbook: ModuleType, model: str
) -> None:
    workflow = llama_index_cookbook.build_crag_workflow(
        retriever=llama_index_cookbook.FixedRetriever(CORPUS),
        llm=MockLLM(max_tokens=4),
        web_search=llama_index_cookbook.stub_web_search,
        evaluator=_evaluator_for("incorrect", model),
        refiner=_refiner(model),
        timeout=60,
    )
    result = _run(workflow)
    assert result["steps"] == STEPS["incorrect"]
    assert result["web_context"]


def test_llama_index_demo_runs_offline_and_says_it_is_meaningless(
    llama_index_cookbook: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    llama_index_cookbook.main(["--demo"])
    out = capsys.readouterr().out
    assert "MEANINGLESS" in out
    assert "steps:   retrieve -> grade" in out
