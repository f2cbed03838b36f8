"""A served model as a scoring backend (RemoteEngine over HTTP and over the ingress handle):
the roles, the pipeline, CRAG and both adapters give the local engine's results.

One local Ray instance (2 CPUs, no dashboard) and one Serve application bound to
127.0.0.1 on a free port are started for the module (only by the tests that need them) and
shut down at its end. Sockets stay disabled except to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from crag_integrations import (
    CragEvaluator,
    EngineConfig,
    EvidenceHighlighter,
    IncompatibleModelError,
    KnowledgeRefiner,
    RelevanceGrader,
    Reranker,
    RerankGradeTrimPipeline,
    get_engine,
)
from crag_integrations.backends import ScoringBackend, backend_from_spec, is_scoring_backend

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from crag_integrations.ray import RemoteEngine, RemoteEngineError, ServedModel, build_app
    from crag_integrations.ray.model_server import UnknownModelError

pytestmark = [
    pytest.mark.allow_hosts(["127.0.0.1"]),
    pytest.mark.timeout(300),
    # Ray and its dependencies warn about their own internals on import and shutdown.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

_T = TypeVar("_T")

APP = "crag-remote"
QUERY = "what causes rain?"
LONG = " ".join(
    ["Rain forms when water vapour condenses into droplets heavy enough to fall."] * 6
    + ["Clouds drift over the hills, and the droplets grow until they fall as rain."] * 4
)
TEXTS = [
    "Rain forms when water vapour condenses into droplets heavy enough to fall.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    LONG,
    "Clouds are made of tiny droplets of water or ice crystals. They drift. Then rain.",
    "Tokyo is the capital of Japan and its largest city.",
    "",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Served:
    """The running application: its URL, the served configs, the ingress handle, and a
    remote engine per model and transport (``engines["http"]["rr"]``)."""

    def __init__(self, url: str, configs: dict[str, EngineConfig], handle: Any) -> None:
        self.url, self.configs, self.handle = url, configs, handle
        self.engines = {
            "http": {name: RemoteEngine(url, model=name) for name in configs},
            "handle": {name: RemoteEngine(handle=handle, model=name) for name in configs},
        }

    def fresh(self, transport: str, name: str) -> RemoteEngine:
        """A new engine (nothing asked of the server yet)."""
        if transport == "http":
            return RemoteEngine(self.url, model=name)
        return RemoteEngine(handle=self.handle, model=name)


@pytest.fixture(scope="module")
def served(checkpoints: dict[str, Path]) -> Iterator[Served]:
    """Ray (2 CPUs) + Serve on 127.0.0.1 with a reranker, a grader and a highlighter."""
    configs = {
        # Short windows, so long texts are read in several (their pooling crosses the wire).
        "rr": EngineConfig(
            model=str(checkpoints["bert-rerank"]), device="cpu", max_length=32, stride=8
        ),
        "grader": EngineConfig(
            model=str(checkpoints["bert-binary"]), device="cpu", max_length=40, stride=8
        ),
        "tok": EngineConfig(model=str(checkpoints["bert-token"]), device="cpu"),
    }
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray puts sockets here
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")  # no token file in the user's home
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp_dir,
        )
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app = build_app(
                [
                    ServedModel(name=name, engine=config, num_cpus=0.5)
                    for name, config in configs.items()
                ],
                retry_deadline_s=60,
            )
            handle = serve.run(app, name=APP, route_prefix="/")
            running = Served(f"http://127.0.0.1:{port}", configs, handle)
            yield running
            for engines in running.engines.values():
                for engine in engines.values():
                    engine.close()
        finally:
            serve.shutdown()
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def plain(value: Any) -> Any:
    """Results as nested plain values (dataclasses as dicts, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    """Equal, every float within ``tol`` (replicas run torch with other thread counts, so
    float32 sums may differ in the last bits)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def same(got: Any, want: Any) -> bool:
    return close(plain(got), plain(want))


def run(coroutine: Awaitable[_T]) -> _T:
    async def main() -> _T:
        return await coroutine

    return asyncio.run(main())


TRANSPORTS = ("http", "handle")


# --------------------------------------------------------------------------------------
# The backend surface (no cluster needed)


def test_both_engines_are_scoring_backends_without_loading_or_asking(reranker_path: str) -> None:
    """The local engine and a RemoteEngine have every ScoringBackend member; checking that
    neither loads the model nor contacts a server (nothing listens on the URL)."""
    local = get_engine(reranker_path)
    nowhere = RemoteEngine(f"http://127.0.0.1:{free_port()}", model="rr")
    assert is_scoring_backend(local) and not local.is_loaded
    assert is_scoring_backend(nowhere) and not nowhere.is_loaded
    assert not is_scoring_backend(reranker_path) and not is_scoring_backend(object())
    if sys.version_info >= (3, 12):  # older isinstance reads (loads) every member
        assert isinstance(nowhere, ScoringBackend)
    with pytest.raises(TypeError, match="ScoringBackend"):
        Reranker(model=object())  # type: ignore[arg-type]
    reranker = Reranker(model=nowhere, top_n=2)
    assert reranker.engine is nowhere
    pytest.importorskip("langchain_core")
    from crag_integrations.langchain import CrossEncoderRerank, EvidenceTrimmer

    CrossEncoderRerank(model=nowhere, top_n=2)  # built and validated, nothing sent
    EvidenceTrimmer(model=nowhere)
    assert not nowhere.is_loaded
    with pytest.raises(RemoteEngineError, match="could not reach"):
        reranker.rank(QUERY, TEXTS)
    with pytest.raises(ValueError, match="url or a handle"):
        RemoteEngine(model="rr")
    with pytest.raises(ValueError, match="http"):
        RemoteEngine("ftp://host", model="rr")


def test_a_url_engine_pickles_and_rebuilds_from_its_spec() -> None:
    """Equal by URL, model and timeout; pickle and the spec give an equal engine."""
    engine = RemoteEngine("http://127.0.0.1:8000/", model="rr", timeout=30)
    assert engine == RemoteEngine("http://127.0.0.1:8000", model="rr", timeout=30)
    assert engine != RemoteEngine("http://127.0.0.1:8000", model="grader", timeout=30)
    assert pickle.loads(pickle.dumps(engine)) == engine
    spec = engine.to_spec()
    assert spec is not None and spec["url"] == "http://127.0.0.1:8000"
    assert backend_from_spec(spec) == engine
    with pytest.raises(ValueError, match="unknown scoring backend kind"):
        backend_from_spec({"scoring_backend": "nope"})


def test_the_local_path_imports_no_ray() -> None:
    """The roles, options, CRAG and the backend protocol import no Ray, httpx or torch; the
    remote engine imports no Ray."""
    code = (
        "import sys, crag_integrations, crag_integrations.roles, crag_integrations.options,"
        " crag_integrations.crag, crag_integrations.backends;"
        "print(','.join(m for m in ('ray', 'httpx', 'fastapi', 'torch') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == ""
    # An HTTP client of a deployment needs httpx, not Ray.
    code = (
        "import sys; from crag_integrations.ray import RemoteEngine;"
        "print(','.join(m for m in ('ray', 'fastapi', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------------------
# Parity: local engine = RemoteEngine over HTTP = over the handle


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_roles_on_a_remote_engine_match_the_local_engine(
    served: Served, transport: str
) -> None:
    """Scores, ranks, grades, spans and sentence scores within 1e-6, window counts equal."""
    rr, grader, tok = (served.configs[n] for n in ("rr", "grader", "tok"))
    remote = served.engines[transport]

    local_ranked = Reranker(model=rr).score_texts(QUERY, TEXTS)
    assert max(r.num_windows for r in local_ranked) > 1
    assert same(Reranker(model=remote["rr"]).score_texts(QUERY, TEXTS), local_ranked)
    options = {"top_n": 3, "score_threshold": -5.0}
    assert same(
        Reranker(model=remote["rr"], **options).rank(QUERY, TEXTS),
        Reranker(model=rr, **options).rank(QUERY, TEXTS),
    )
    assert same(
        RelevanceGrader(model=remote["grader"], threshold=0.3).grade(QUERY, TEXTS),
        RelevanceGrader(model=grader, threshold=0.3).grade(QUERY, TEXTS),
    )
    assert same(  # a one-logit reranker graded through its sigmoid
        RelevanceGrader(model=remote["rr"]).grade(QUERY, TEXTS),
        RelevanceGrader(model=rr).grade(QUERY, TEXTS),
    )
    for options in (
        {"threshold": 0.4, "return_sentence_scores": True},
        {"max_length": 24, "doc_stride": 6, "return_sentence_scores": True, "min_span_chars": 0},
        {"max_length": 24, "doc_stride": 6, "window_pooling": "mean", "threshold": 0.3},
    ):
        want = EvidenceHighlighter(model=tok, **options).highlight(QUERY, TEXTS)
        got = EvidenceHighlighter(model=remote["tok"], **options).highlight(QUERY, TEXTS)
        assert same(got, want), options
    assert max(h.num_windows for h in want) > 1
    assert any(h.spans for h in want)
    assert remote["tok"].config == tok  # the served engine's own configuration


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_pipeline_on_remote_engines_matches_the_local_engine(
    served: Served, transport: str
) -> None:
    """Rerank -> grade -> trim with an action: kept, dropped, reasons and action equal."""
    remote = served.engines[transport]

    def pipeline(models: dict[str, Any]) -> RerankGradeTrimPipeline:
        return RerankGradeTrimPipeline(
            reranker=Reranker(model=models["rr"], top_n=4),
            grader=RelevanceGrader(model=models["grader"], threshold=0.3),
            highlighter=EvidenceHighlighter(model=models["tok"], threshold=0.4),
            on_no_evidence="keep",
            action_upper=0.6,
            action_lower=0.2,
        )

    want = pipeline(served.configs).run(QUERY, TEXTS)
    got = pipeline(remote).run(QUERY, TEXTS)
    assert same(got, want)
    assert want.dropped and want.action is not None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_crag_evaluator_and_refiner_on_a_remote_engine_match_local(
    served: Served, transport: str
) -> None:
    """Scores, bands, actions and refined strips equal, on both score scales."""
    rr, grader = served.configs["rr"], served.configs["grader"]
    remote = served.engines[transport]
    for local, far, options in (
        (rr, remote["rr"], {"scale": "logit", "upper": 0.5, "lower": -0.5}),
        (grader, remote["grader"], {"upper": 0.55, "lower": 0.45}),
    ):
        want = CragEvaluator(model=local, **options).run(QUERY, TEXTS)
        assert same(CragEvaluator(model=far, **options).run(QUERY, TEXTS), want)
    refiner = {"mode": "sentences", "threshold": None, "top_k": 3}
    assert same(
        KnowledgeRefiner(model=remote["rr"], **refiner).run(QUERY, TEXTS),
        KnowledgeRefiner(model=rr, **refiner).run(QUERY, TEXTS),
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_async_calls_await_without_blocking_the_loop_or_a_thread_each(
    served: Served, transport: str
) -> None:
    """24 concurrent async role calls on fresh engines: all are in flight at once (a call
    that blocked the loop would finish before the next one started), the loop keeps ticking,
    no thread per call is started, and the results equal the sync local ones."""
    rr, tok = served.configs["rr"], served.configs["tok"]
    want_ranked = Reranker(model=rr, top_n=3).rank(QUERY, TEXTS)
    want_spans = EvidenceHighlighter(model=tok).highlight(QUERY, TEXTS)
    want_grades = RelevanceGrader(model=rr).grade(QUERY, TEXTS)

    async def main() -> tuple[list[Any], int, int, int]:
        engine, tokens = served.fresh(transport, "rr"), served.fresh(transport, "tok")
        baseline = threading.active_count()
        beats = 0
        peak = baseline
        done = asyncio.Event()
        started_before_first_finished = 0
        finished = 0

        async def heartbeat() -> None:
            nonlocal peak, beats
            while not done.is_set():
                await asyncio.sleep(0.005)
                beats += 1
                peak = max(peak, threading.active_count())

        async def tracked(call: Any) -> Any:
            nonlocal started_before_first_finished, finished
            started_before_first_finished += finished == 0
            result = await call
            finished += 1
            return result

        beat = asyncio.create_task(heartbeat())
        calls = []
        for _ in range(8):
            calls.append(Reranker(model=engine, top_n=3).arank(QUERY, TEXTS))
            calls.append(EvidenceHighlighter(model=tokens).ahighlight(QUERY, TEXTS))
            calls.append(RelevanceGrader(model=engine).agrade(QUERY, TEXTS))
        results = await asyncio.gather(*(tracked(call) for call in calls))
        done.set()
        await beat
        await engine.aclose()
        await tokens.aclose()
        return results, started_before_first_finished, beats, peak - baseline

    results, in_flight_together, beats, extra_threads = asyncio.run(main())
    for position, result in enumerate(results):
        want = (want_ranked, want_spans, want_grades)[position % 3]
        assert same(result, want)
    assert in_flight_together == len(results) == 24
    assert beats >= 3
    assert extra_threads < 8, extra_threads


# --------------------------------------------------------------------------------------
# The adapters


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_langchain_compressor_on_a_remote_engine_matches_local(
    served: Served, transport: str
) -> None:
    """CrossEncoderRerank and EvidenceTrimmer: documents, order and metadata equal, sync
    and async; the caller's documents are untouched."""
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from crag_integrations.langchain import CrossEncoderRerank, EvidenceTrimmer

    def documents() -> list[Document]:
        return [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(TEXTS)]

    remote = served.engines[transport]
    for cls, name, options in (
        (CrossEncoderRerank, "rr", {"top_n": 3}),
        (EvidenceTrimmer, "tok", {"threshold": 0.4, "on_no_evidence": "drop"}),
    ):
        local = cls(model=served.configs[name], **options)  # type: ignore[arg-type]
        far = cls(model=remote[name], **options)  # type: ignore[arg-type]
        want = local.compress_documents(documents(), QUERY)
        given = documents()
        got = far.compress_documents(given, QUERY)
        assert same([(d.page_content, d.metadata) for d in got],
                    [(d.page_content, d.metadata) for d in want])  # fmt: skip
        assert given == documents()
        got_async = run(far.acompress_documents(documents(), QUERY))
        assert same([d.metadata for d in got_async], [d.metadata for d in want])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_llama_index_postprocessor_on_a_remote_engine_matches_local(
    served: Served, transport: str
) -> None:
    """CrossEncoderRerank and EvidenceTrimmer postprocessors: nodes, scores and metadata
    equal, sync and async; the rerank events name the served model's path as locally."""
    pytest.importorskip("llama_index.core")
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.rerank import ReRankStartEvent
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from crag_integrations.llama_index import CrossEncoderRerank, EvidenceTrimmer

    seen: list[str] = []

    class Names(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            if isinstance(event, ReRankStartEvent):
                seen.append(event.model_name)

    def nodes() -> list[NodeWithScore]:
        return [
            NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5)
            for i, t in enumerate(TEXTS)
        ]

    def dump(out: list[NodeWithScore]) -> list[Any]:
        return [(n.node.node_id, n.score, n.node.get_content(), n.node.metadata) for n in out]

    dispatcher = get_dispatcher()
    handler = Names()
    dispatcher.add_event_handler(handler)
    try:
        remote = served.engines[transport]
        for cls, name, options in (
            (CrossEncoderRerank, "rr", {"top_n": 3}),
            (EvidenceTrimmer, "tok", {"threshold": 0.4}),
        ):
            local = cls(model=served.configs[name], **options)  # type: ignore[arg-type]
            far = cls(model=remote[name], **options)  # type: ignore[arg-type]
            seen.clear()
            want = local.postprocess_nodes(nodes(), QueryBundle(QUERY))
            got = far.postprocess_nodes(nodes(), QueryBundle(QUERY))
            assert same(dump(got), dump(want))
            assert seen == [served.configs[name].model] * 2
            got_async = run(far.apostprocess_nodes(nodes(), QueryBundle(QUERY)))
            assert same(dump(got_async), dump(want))
    finally:
        dispatcher.event_handlers.remove(handler)


def test_adapters_round_trip_a_url_engine_and_refuse_json_for_a_handle(served: Served) -> None:
    """A URL engine survives model_dump, to_json/from_json and pickle (equal, same results);
    a handle engine stays live in Python and JSON output says why it cannot be written."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from pydantic_core import PydanticSerializationError

    from crag_integrations.langchain import CrossEncoderRerank as LangChainRerank
    from crag_integrations.llama_index import CrossEncoderRerank as LlamaRerank

    engine = served.engines["http"]["rr"]
    compressor = LangChainRerank(model=engine, top_n=2)
    dumped = compressor.model_dump()
    assert dumped["model"]["url"] == served.url
    assert LangChainRerank(**dumped) == compressor

    post = LlamaRerank(model=engine, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}")) for i, t in enumerate(TEXTS)]
    want = post.postprocess_nodes(nodes, QueryBundle(QUERY))
    for rebuilt in (
        LlamaRerank.from_json(post.to_json()),
        LlamaRerank.from_dict(post.to_dict()),
        pickle.loads(pickle.dumps(post)),
    ):
        assert rebuilt.model == engine
        got = rebuilt.postprocess_nodes(nodes, QueryBundle(QUERY))
        assert [(n.node.node_id, n.score) for n in got] == [(n.node.node_id, n.score) for n in want]

    handle_engine = served.engines["handle"]["rr"]
    live = LangChainRerank(model=handle_engine, top_n=2)
    assert live.model_dump()["model"] is handle_engine
    assert LangChainRerank(**live.model_dump()) == live
    with pytest.raises(PydanticSerializationError, match="cannot be written as JSON"):
        live.model_dump_json()
    with pytest.raises(TypeError, match="RemoteEngine is not JSON serializable"):
        LlamaRerank(model=handle_engine).to_json()
    with pytest.raises(ValueError, match="device"):
        LangChainRerank(model=engine, device="cuda")


# --------------------------------------------------------------------------------------
# Errors


def test_remote_errors_surface_as_clear_exceptions(served: Served) -> None:
    """A model failure, an unknown model and a wrong head raise clearly, never hang; the
    head refusal is the local one, word for word."""
    poisoned = "rain " * 5000
    http, by_handle = served.engines["http"], served.engines["handle"]
    with pytest.raises(RemoteEngineError, match="leaves no room for the text") as caught:
        Reranker(model=http["rr"]).rank(poisoned, TEXTS)
    assert caught.value.status == 500 and caught.value.error == "model_error"
    with pytest.raises(ValueError, match="leaves no room for the text"):
        Reranker(model=by_handle["rr"]).rank(poisoned, TEXTS)
    with pytest.raises(ValueError, match="leaves no room for the text"):
        run(Reranker(model=by_handle["rr"]).arank(poisoned, TEXTS))
    with pytest.raises(RemoteEngineError, match="leaves no room for the text"):
        run(Reranker(model=http["rr"]).arank(poisoned, TEXTS))

    with pytest.raises(RemoteEngineError, match="'nope' is not served") as unknown:
        served.fresh("http", "nope").load()
    assert unknown.value.status == 404
    with pytest.raises(UnknownModelError):
        served.fresh("handle", "nope").load()

    with pytest.raises(IncompatibleModelError) as local_refusal:
        Reranker(model=served.configs["tok"]).rank(QUERY, TEXTS)
    for transport in TRANSPORTS:
        with pytest.raises(IncompatibleModelError) as remote_refusal:
            Reranker(model=served.engines[transport]["tok"]).rank(QUERY, TEXTS)
        assert str(remote_refusal.value) == str(local_refusal.value)
    with pytest.raises(IncompatibleModelError, match="token-classification"):
        http["rr"].token_scores([(QUERY, "rain")])  # the server's own head check: a 422
    with pytest.raises(ValueError, match=r"pairs\[1\]: the text has a lone surrogate"):
        http["rr"].score_pairs([(QUERY, "rain"), (QUERY, "bad \ud800")])
