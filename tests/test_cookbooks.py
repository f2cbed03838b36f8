"""The corrective-RAG cookbooks run offline end to end, take each CRAG branch, and agree.

Both agents run on the session's tiny reranker with a fake LLM and a stub search tool.
Thresholds are set around the scores the tiny model actually gives (computed here), so
each of the three actions happens deterministically. The two command lines take the same
flags and, for the same flags, print the same run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("llama_index.core.workflow")

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from llama_index.core.llms import MockLLM

from crag_integrations.crag import CragEvaluator, KnowledgeRefiner
from crag_integrations.langchain import CragEvaluatorCompressor
from crag_integrations.llama_index import METADATA_KEYS, CragEvaluatorPostprocessor
from crag_integrations.metadata import METADATA_SCHEMA

#: How each cookbook's evaluator is built from a model and its thresholds: the one place the
#: constructors are spelled. Each cookbook grades with its framework's adapter, which writes
#: the documented metadata.
EVALUATORS: dict[str, Callable[..., Any]] = {
    "langgraph": lambda model, upper, lower: CragEvaluatorCompressor(
        model=model, upper=upper, lower=lower
    ),
    "llama_index": lambda model, upper, lower: CragEvaluatorPostprocessor(
        model=model, upper=upper, lower=lower
    ),
}

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


def _thresholds_for(action: str, model: str) -> tuple[float, float]:
    """``(upper, lower)`` that force ``action`` given the tiny model's real scores."""
    scores = CragEvaluator(model=model).evaluate(QUESTION, CORPUS).scores
    low, high = min(scores), max(scores)
    assert 0.0 < low <= high < 1.0
    if action == "correct":
        return high, 0.0
    if action == "ambiguous":
        return math.nextafter(high, 1.0), low
    return 1.0, math.nextafter(high, 1.0)


def _evaluator_for(action: str, model: str, cookbook: str = "langgraph") -> Any:
    """The ``cookbook``'s evaluator, with thresholds that force ``action``."""
    upper, lower = _thresholds_for(action, model)
    return EVALUATORS[cookbook](model, upper, lower)


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
        evaluator=_evaluator_for(action, model, "llama_index"),
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
        evaluator=_evaluator_for("incorrect", model, "llama_index"),
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


# --------------------------------------------------------------------------------------
# What a user reads: one command line, one refinement, the answer, the documented keys


class EchoChatModel(BaseChatModel):
    """A chat model that replies with its prompt, as LlamaIndex's ``MockLLM`` does."""

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = AIMessage(content=messages[-1].text)
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _options(parser: Any) -> list[tuple[Any, ...]]:
    return [
        (a.option_strings, a.dest, a.default, a.type, a.required, a.help)
        for a in parser._actions  # argparse has no public list of its arguments
    ]


def _printed(cookbook: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    cookbook.main(argv)
    return capsys.readouterr().out


def test_both_cookbooks_take_the_same_flags_with_the_same_defaults(
    langgraph_cookbook: ModuleType, llama_index_cookbook: ModuleType
) -> None:
    """Flag for flag, default for default, and the Workflow accepts --upper/--lower."""
    langgraph, workflow = langgraph_cookbook.build_parser(), llama_index_cookbook.build_parser()
    assert _options(langgraph) == _options(workflow)
    flags = {flag for action in workflow._actions for flag in action.option_strings}
    assert {"--demo", "--evaluator-model", "--question", "--upper", "--lower"} <= flags
    args = workflow.parse_args(["--demo", "--upper", "0.7", "--lower", "0.1"])
    assert (args.upper, args.lower) == (0.7, 0.1)
    with pytest.raises(SystemExit):
        workflow.parse_args([])  # a model source is required: --demo or --evaluator-model


@pytest.mark.parametrize(
    "flags",
    [[], ["--upper", "0", "--lower", "0"], ["--upper", "1", "--lower", "0"], ["--top-k", "1"]],
    ids=["defaults", "correct", "ambiguous", "top-k"],
)
@pytest.mark.parametrize("source", ["demo", "evaluator-model"])
def test_both_cookbooks_print_the_same_run_for_the_same_flags(
    langgraph_cookbook: ModuleType,
    llama_index_cookbook: ModuleType,
    model: str,
    source: str,
    flags: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Same model and flags: same steps, action, scores, refinement, web context and answer."""
    argv = (["--demo"] if source == "demo" else ["--evaluator-model", model]) + flags
    langgraph = _printed(langgraph_cookbook, argv, capsys)
    workflow = _printed(llama_index_cookbook, argv, capsys)
    assert langgraph == workflow


@pytest.mark.parametrize("cookbook", ["langgraph", "llama_index"])
def test_a_correct_demo_prints_the_llms_answer_not_its_rewrite(
    langgraph_cookbook: ModuleType,
    llama_index_cookbook: ModuleType,
    cookbook: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A correct retrieval never rewrites: the one LLM reply printed is the answer."""
    module = {"langgraph": langgraph_cookbook, "llama_index": llama_index_cookbook}[cookbook]
    out = _printed(module, ["--demo", "--upper", "0", "--lower", "0"], capsys)
    assert "steps:   retrieve -> grade -> refine -> generate" in out
    assert f"answer:  {module.DEMO_ANSWER}\n" in out
    assert module.DEMO_REWRITE not in out


def test_langgraph_correct_action_with_nothing_refined_answers_from_the_correct_documents(
    langgraph_cookbook: ModuleType, model: str
) -> None:
    """No strip passes the refiner: the documents graded correct reach the LLM, whole."""
    documents = [Document(page_content=t) for t in CORPUS]

    @tool
    def no_search(query: str) -> str:
        """Must not be called on a correct retrieval."""
        raise AssertionError("searched the web on a correct retrieval")

    graph = langgraph_cookbook.build_crag_graph(
        retriever=RunnableLambda(lambda question: documents),
        chat_model=EchoChatModel(),
        web_search=no_search,
        evaluator=_evaluator_for("correct", model),
        refiner=KnowledgeRefiner(model=model, threshold=1.0),  # no probability reaches 1
    )
    state = graph.invoke({"question": QUESTION})
    correct = [
        d.page_content
        for d in state["documents"]
        if d.metadata["crag_document_action"] == "correct"
    ]
    assert state["action"] == "correct" and correct
    assert state["refined_context"] == correct
    assert "(none)" not in state["generation"]
    assert all(text in state["generation"] for text in correct)


def test_llama_index_correct_action_with_nothing_refined_answers_from_the_correct_nodes(
    llama_index_cookbook: ModuleType, model: str
) -> None:
    """No strip passes the refiner: the nodes graded correct reach the LLM, whole."""

    def no_search(query: str) -> list[str]:
        raise AssertionError("searched the web on a correct retrieval")

    workflow = llama_index_cookbook.build_crag_workflow(
        retriever=llama_index_cookbook.FixedRetriever(CORPUS),
        llm=MockLLM(),  # echoes its prompt
        web_search=no_search,
        evaluator=_evaluator_for("correct", model, "llama_index"),
        refiner=KnowledgeRefiner(model=model, threshold=1.0),  # no probability reaches 1
        timeout=60,
    )
    result = _run(workflow)
    correct = [
        n.node.get_content()
        for n in result["nodes"]
        if n.node.metadata["crag_document_action"] == "correct"
    ]
    assert result["action"] == "correct" and correct
    assert result["refined_context"] == correct
    assert "(none)" not in result["answer"]
    assert all(text in result["answer"] for text in correct)


def test_llama_index_workflow_records_the_names_of_its_steps(
    llama_index_cookbook: ModuleType, model: str
) -> None:
    """The ambiguous branch visits every step; each is recorded under its step's name."""
    workflow = llama_index_cookbook.build_crag_workflow(
        retriever=llama_index_cookbook.FixedRetriever(CORPUS),
        llm=MockLLM(max_tokens=4),
        web_search=llama_index_cookbook.stub_web_search,
        evaluator=_evaluator_for("ambiguous", model, "llama_index"),
        refiner=_refiner(model),
        timeout=60,
    )
    step_names = {
        name
        for name, member in inspect.getmembers(type(workflow))
        if hasattr(member, "_step_config")  # what llama_index's @step attaches
    }
    result = _run(workflow)
    assert result["steps"] == STEPS["ambiguous"]
    assert set(result["steps"]) == step_names


def test_llama_index_workflow_writes_the_documented_node_metadata(
    llama_index_cookbook: ModuleType, model: str
) -> None:
    """Graded nodes carry the adapter's documented keys (hidden from the LLM), no others."""
    workflow = llama_index_cookbook.build_crag_workflow(
        retriever=llama_index_cookbook.FixedRetriever(CORPUS),
        llm=MockLLM(max_tokens=4),
        web_search=llama_index_cookbook.stub_web_search,
        evaluator=_evaluator_for("correct", model, "llama_index"),
        refiner=_refiner(model),
        timeout=60,
    )
    result = _run(workflow)
    for index, node in enumerate(result["nodes"]):
        metadata = node.node.metadata
        assert "relevance_score" not in metadata  # LangChain's key; LlamaIndex has node.score
        assert set(metadata) <= set(METADATA_KEYS)
        assert {"crag_action", "crag_document_action", "crag_original_index"} <= set(metadata)
        assert metadata["crag_original_index"] == index
        assert metadata["retrieval_score"] is None  # FixedRetriever gives no score
        assert set(metadata) <= set(node.node.excluded_llm_metadata_keys)


def _stub_search() -> Any:
    """An offline search tool returning one fixed result."""

    @tool
    def stub_search(query: str) -> str:
        """Offline web search."""
        return WEB[0]

    return stub_search


def test_langgraph_agent_writes_the_documented_document_metadata(
    langgraph_cookbook: ModuleType, model: str
) -> None:
    """Graded documents are exactly the LangChain evaluator adapter's annotated copies."""
    documents = [Document(page_content=t, metadata={"id": i}) for i, t in enumerate(CORPUS)]
    evaluator = _evaluator_for("incorrect", model)
    graph = langgraph_cookbook.build_crag_graph(
        retriever=RunnableLambda(lambda question: documents),
        chat_model=FakeListChatModel(responses=["rain", "It rains."]),
        web_search=_stub_search(),
        evaluator=evaluator,
        refiner=_refiner(model),
    )
    graded = graph.invoke({"question": QUESTION})["documents"]
    assert graded == list(evaluator.compress_documents(documents, QUESTION))
    for index, document in enumerate(graded):
        written = set(document.metadata) - {"id"}
        assert written <= set(METADATA_SCHEMA) | {"relevance_score"}
        assert {"crag_action", "crag_document_action", "relevance_score"} <= written
        assert document.metadata["crag_original_index"] == index
