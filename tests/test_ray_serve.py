"""The Ray Serve application: parity with the local roles over handles, HTTP and real
clients (cohere, langchain-cohere, LlamaIndex Cohere/TEI postprocessors), errors, faults.

One local Ray instance (2 CPUs, no dashboard) and one Serve application bound to
127.0.0.1 on a free port are started for the whole module and shut down at its end.
Sockets stay disabled except to 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

from crag_integrations import (
    CragEvaluator,
    EngineConfig,
    EvidenceHighlighter,
    RelevanceGrader,
    Reranker,
)

# Ray's own modules trip deprecation warnings of pydantic and others when imported.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from crag_integrations.ray import (
        AppArgs,
        ServedModel,
        app_builder,
        build_app,
        model_deployment_name,
    )

pytestmark = [
    pytest.mark.allow_hosts(["127.0.0.1"]),
    pytest.mark.timeout(300),
    # Ray and its dependencies warn about their own internals on import and shutdown.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

APP = "crag"
QUERY = "what causes rain?"
TEXTS = [
    "Rain forms when water vapour condenses into droplets heavy enough to fall.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Clouds are made of tiny droplets of water or ice crystals.",
    "Tokyo is the capital of Japan and its largest city.",
    "",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Served:
    """The running application: its URL, configs and the ingress handle."""

    def __init__(self, url: str, configs: dict[str, EngineConfig], handle: Any) -> None:
        self.url, self.configs, self.handle = url, configs, handle

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=120)


@pytest.fixture(scope="module")
def served(checkpoints: dict[str, Path]) -> Iterator[Served]:
    """Ray (2 CPUs) + Serve on 127.0.0.1 with a reranker, a grader and a highlighter."""
    configs = {
        "rr": EngineConfig(model=str(checkpoints["bert-rerank"]), device="cpu"),
        "grader": EngineConfig(model=str(checkpoints["bert-binary"]), device="cpu"),
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
                    ServedModel(name="rr", engine=configs["rr"], num_cpus=0.5),
                    ServedModel(
                        name="grader",
                        engine=configs["grader"],
                        num_cpus=0.5,
                        min_replicas=1,
                        max_replicas=1,
                        target_ongoing_requests=32,
                    ),
                    ServedModel(name="tok", engine=configs["tok"], num_cpus=0.5),
                ],
                retry_deadline_s=90,
            )
            handle = serve.run(app, name=APP, route_prefix="/")
            yield Served(f"http://127.0.0.1:{port}", configs, handle)
        finally:
            # LlamaIndex's CohereRerank keeps its own cohere client (an open keep-alive
            # connection) in a private attribute: collect it here, where it belongs, and not
            # in whichever later test the garbage collector happens to run.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
            serve.shutdown()
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def approx(values: list[float]) -> Any:
    return pytest.approx(values, abs=1e-6)


def plain(value: Any) -> Any:
    """Results as nested plain values, floats rounded to 1e-6 (replicas run torch with
    other thread counts than this process, so float32 sums may differ in the last bits)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def same(got: Any, want: Any) -> bool:
    """Equal up to 1e-6 on every float (compared after rounding, with a 1e-6 slack)."""
    a, b = plain(got), plain(want)
    if a == b:
        return True
    return _close(a, b)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 2e-6
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# --------------------------------------------------------------------------------------
# Parity: local engine = Serve handle = HTTP


def test_handles_match_the_local_roles(served: Served) -> None:
    """Every verb through the ingress handle and the model's own handle equals local."""
    rr, grader, tok = served.configs["rr"], served.configs["grader"], served.configs["tok"]
    local_scores = Reranker(model=rr).score_texts(QUERY, TEXTS)
    assert same(served.handle.call.remote("rr", "score", QUERY, TEXTS).result(), local_scores)
    model_handle = serve.get_deployment_handle(model_deployment_name("rr"), app_name=APP)
    assert same(model_handle.score.remote(QUERY, TEXTS).result(), local_scores)
    ranked = served.handle.call.remote("rr", "rerank", QUERY, TEXTS, top_n=2).result()
    assert same(ranked, Reranker(model=rr, top_n=2).rank(QUERY, TEXTS))
    grades = served.handle.call.remote("grader", "grade", QUERY, TEXTS, threshold=0.3).result()
    assert same(grades, RelevanceGrader(model=grader, threshold=0.3).grade(QUERY, TEXTS))
    options = {"threshold": 0.4, "return_sentence_scores": True}
    highlights = served.handle.call.remote("tok", "highlight", QUERY, TEXTS, **options).result()
    assert same(highlights, EvidenceHighlighter(model=tok, **options).highlight(QUERY, TEXTS))
    verdict = served.handle.call.remote("rr", "evaluate", QUERY, TEXTS).result()
    assert same(verdict, CragEvaluator(model=rr).evaluate(QUERY, TEXTS))


def test_own_http_routes_match_the_local_roles(served: Served) -> None:
    """/v1/grade, /v1/highlight and /v1/crag/evaluate say what the roles say."""
    grader, tok, rr = served.configs["grader"], served.configs["tok"], served.configs["rr"]
    body = {"model": "grader", "query": QUERY, "texts": TEXTS, "threshold": 0.3}
    response = served.post("/v1/grade", body)
    assert response.status_code == 200, response.text
    local = RelevanceGrader(model=grader, threshold=0.3).grade(QUERY, TEXTS)
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(TEXTS)))
    assert [r["label"] for r in results] == [g.label for g in local]
    assert [r["relevant"] for r in results] == [g.relevant for g in local]
    assert [r["probability"] for r in results] == approx([g.probability for g in local])
    assert results[0]["distribution"] == pytest.approx(dict(local[0].distribution), abs=1e-6)

    body = {"model": "tok", "query": QUERY, "texts": TEXTS, "return_sentence_scores": True}
    response = served.post("/v1/highlight", body)
    assert response.status_code == 200, response.text
    local_h = EvidenceHighlighter(model=tok, return_sentence_scores=True).highlight(QUERY, TEXTS)
    for got, want in zip(response.json()["results"], local_h, strict=True):
        assert got["trimmed_text"] == want.trimmed_text
        assert [(s["start"], s["end"], s["text"]) for s in got["spans"]] == [
            (s.start, s.end, s.text) for s in want.spans
        ]
        assert want.sentences is not None
        assert [s["score"] for s in got["sentences"]] == approx([s.score for s in want.sentences])

    body = {"model": "rr", "query": QUERY, "texts": TEXTS, "upper": 0.5, "lower": 0.1}
    response = served.post("/v1/crag/evaluate", body)
    assert response.status_code == 200, response.text
    verdict = CragEvaluator(model=rr, upper=0.5, lower=0.1).evaluate(QUERY, TEXTS)
    got = response.json()
    assert got["action"] == verdict.action
    assert got["document_actions"] == list(verdict.document_actions)
    assert got["scores"] == approx(list(verdict.scores))


def test_cohere_and_tei_routes_match_the_local_reranker(served: Served) -> None:
    """Cohere's relevance_score is the probability; TEI gives it or the raw logit."""
    local = Reranker(model=served.configs["rr"]).rank(QUERY, TEXTS)
    for path in ("/v2/rerank", "/v1/rerank"):
        body = {"model": "rr", "query": QUERY, "documents": TEXTS, "top_n": 3}
        response = served.post(path, body)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["index"] for r in results] == [r.index for r in local[:3]]
        assert [r["relevance_score"] for r in results] == approx([r.probability for r in local[:3]])
        assert "document" not in results[0]
    v1 = served.post(
        "/v1/rerank",
        {
            "model": "rr",
            "query": QUERY,
            "documents": [{"text": t} for t in TEXTS],
            "return_documents": True,
        },
    ).json()["results"]
    assert [r["document"]["text"] for r in v1] == [r.text for r in local]
    tei = served.post("/rerank", {"query": QUERY, "texts": TEXTS, "raw_scores": True}).json()
    assert [r["index"] for r in tei] == [r.index for r in local]
    assert [r["score"] for r in tei] == approx([r.score for r in local])
    assert "text" not in tei[0]


# --------------------------------------------------------------------------------------
# Real clients pointed at the application


def test_the_cohere_sdk_reranks_against_the_app(served: Served) -> None:
    """cohere.ClientV2 and the v1 cohere.Client, base URL pointed at the app."""
    cohere = pytest.importorskip("cohere")
    local = Reranker(model=served.configs["rr"]).rank(QUERY, TEXTS)
    with httpx.Client(timeout=120) as http:  # ours, so that it is closed when done
        v2 = cohere.ClientV2(api_key="unused", base_url=served.url, httpx_client=http)
        answer = v2.rerank(model="rr", query=QUERY, documents=TEXTS, top_n=2)
        v1 = cohere.Client(api_key="unused", base_url=served.url, httpx_client=http)
        answer_v1 = v1.rerank(model="rr", query=QUERY, documents=TEXTS, return_documents=True)
    assert [(r.index, r.relevance_score) for r in answer.results] == [
        (r.index, pytest.approx(r.probability, abs=1e-6)) for r in local[:2]
    ]
    answer = answer_v1
    assert [r.index for r in answer.results] == [r.index for r in local]
    assert answer.results[0].document.text == local[0].text


def test_langchain_cohere_rerank_against_the_app(served: Served) -> None:
    """langchain-cohere's CohereRerank compresses documents with the app's scores."""
    pytest.importorskip("langchain_cohere")
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    documents = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(TEXTS)]
    cohere = pytest.importorskip("cohere")
    with httpx.Client(timeout=120) as http:  # ours, so that it is closed when done
        client = cohere.ClientV2(api_key="unused", base_url=served.url, httpx_client=http)
        reranker = CohereRerank(
            model="rr", base_url=served.url, cohere_api_key="unused", top_n=3, client=client
        )
        compressed = reranker.compress_documents(documents, QUERY)
    local = Reranker(model=served.configs["rr"]).rank(QUERY, TEXTS)[:3]
    assert [d.metadata["i"] for d in compressed] == [r.index for r in local]
    assert [d.metadata["relevance_score"] for d in compressed] == approx(
        [r.probability for r in local]
    )
    assert all("relevance_score" not in d.metadata for d in documents)


def test_llama_index_cohere_and_tei_postprocessors_against_the_app(served: Served) -> None:
    """LlamaIndex's CohereRerank and TextEmbeddingInference give the local scores."""
    pytest.importorskip("llama_index.postprocessor.cohere_rerank")
    pytest.importorskip("llama_index.postprocessor.tei_rerank")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.cohere_rerank import CohereRerank
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    def nodes() -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}")) for i, t in enumerate(TEXTS)]

    local = Reranker(model=served.configs["rr"]).rank(QUERY, TEXTS)
    cohere_rerank = CohereRerank(api_key="unused", model="rr", base_url=served.url, top_n=3)
    got = cohere_rerank.postprocess_nodes(nodes(), QueryBundle(QUERY))
    assert [n.node.node_id for n in got] == [f"n{r.index}" for r in local[:3]]
    assert [n.score for n in got] == approx([r.probability for r in local[:3]])

    tei = TextEmbeddingInference(base_url=served.url, top_n=3, model_name="rr")
    got = tei.postprocess_nodes(nodes(), QueryBundle(QUERY))
    assert [n.node.node_id for n in got] == [f"n{r.index}" for r in local[:3]]
    assert [n.score for n in got] == approx([r.probability for r in local[:3]])


# --------------------------------------------------------------------------------------
# Errors


def test_bad_requests_get_4xx_json_naming_the_field(served: Served) -> None:
    """Malformed bodies, unknown models, wrong heads and bad options are 4xx with a field."""
    cases = [
        ("/v2/rerank", {"model": "rr", "documents": TEXTS}, 422, "query"),
        ("/v2/rerank", {"model": "rr", "query": QUERY, "documents": ["a", 3]}, 422, "documents.1"),
        ("/v2/rerank", {"model": "rr", "query": "", "documents": TEXTS}, 422, "query"),
        ("/v2/rerank", {"model": "nope", "query": QUERY, "documents": TEXTS}, 404, "model"),
        ("/v2/rerank", {"model": "rr", "query": QUERY, "documents": [], "top_n": 0}, 422, "top_n"),
        ("/v1/grade", {"model": "tok", "query": QUERY, "texts": TEXTS}, 422, "model"),
        ("/v1/grade", {"model": "grader", "query": QUERY, "texts": TEXTS, "x": 1}, 422, "x"),
        ("/v1/highlight", {"model": "tok", "query": QUERY, "texts": [], "threshold": 2}, 422,
         "threshold"),
        ("/v1/crag/evaluate", {"model": "rr", "query": QUERY, "texts": TEXTS, "upper": 0.1,
                               "lower": 0.5}, 422, "lower"),
    ]  # fmt: skip
    for path, body, status, field in cases:
        response = served.post(path, body)
        assert response.status_code == status, (path, body, response.text)
        error = response.json()
        assert error["field"] == field, (path, body, error)
        assert error["message"]


def test_a_request_that_fails_in_the_model_fails_alone(served: Served) -> None:
    """A query too long for any window is a 500 with the reason; its batch-mates succeed."""
    local = Reranker(model=served.configs["rr"]).rank(QUERY, TEXTS)
    poisoned = {"model": "rr", "query": "rain " * 5000, "documents": TEXTS}
    healthy = {"model": "rr", "query": QUERY, "documents": TEXTS}
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(served.post, "/v2/rerank", poisoned if i % 4 == 0 else healthy)
                   for i in range(16)]  # fmt: skip
        responses = [f.result() for f in futures]
    for i, response in enumerate(responses):
        if i % 4 == 0:
            assert response.status_code == 500
            assert "leaves no room for the text" in response.json()["message"]
        else:
            assert response.status_code == 200, response.text
            scores = [r["relevance_score"] for r in response.json()["results"]]
            assert scores == approx([r.probability for r in local])


def test_the_schema_page_documents_every_route(served: Served) -> None:
    """FastAPI's OpenAPI lists the routes with their request and response models."""
    schema = httpx.get(served.url + "/openapi.json", timeout=60).json()
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/v1/grade", "/v1/highlight",
            "/v1/crag/evaluate", "/v1/models"} <= set(schema["paths"])  # fmt: skip
    names = set(schema["components"]["schemas"])
    assert {"CohereRerankRequest", "GradeResponse", "HighlightResponse", "ErrorResponse"} <= names
    models = httpx.get(served.url + "/v1/models", timeout=60).json()["models"]
    assert [(m["name"], m["head"]) for m in models] == [
        ("rr", "sequence"),
        ("grader", "sequence"),
        ("tok", "token"),
    ]


# --------------------------------------------------------------------------------------
# Faults (last: they replace a replica)


def _replica_names(deployment: str) -> list[str]:
    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    actors = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in actors if a["name"].startswith(prefix))


@pytest.mark.slow
def test_a_replica_killed_mid_request_gives_retried_successes(served: Served) -> None:
    """ray.kill on the replica while requests are in flight: each one succeeds (retried by
    the ingress once Serve has replaced the replica) or fails clearly; none hangs."""
    documents = [f"{t} {'More words about the weather and rain. ' * 6}" for t in TEXTS] * 12
    local = Reranker(model=served.configs["rr"]).rank(QUERY, documents)
    body = {"model": "rr", "query": QUERY, "documents": documents}
    (victim,) = _replica_names(model_deployment_name("rr"))
    begin = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(served.post, "/v2/rerank", body) for _ in range(48)]
        wait(futures, return_when=FIRST_COMPLETED, timeout=120)
        pending_at_kill = sum(not f.done() for f in futures)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        handle_future = served.handle.call.remote("rr", "rerank", QUERY, documents)
        responses = [f.result(timeout=150) for f in futures]
        by_handle = handle_future.result(timeout_s=150)
    assert time.monotonic() - begin < 150
    assert pending_at_kill > 8  # the kill hit requests in flight and queued ones
    assert same(by_handle, local)
    for response in responses:
        if response.status_code == 200:
            scores = [r["relevance_score"] for r in response.json()["results"]]
            assert scores == approx([r.probability for r in local])
        else:  # a clear error, never a silent partial answer
            assert response.status_code == 503, response.text
            assert "no replica of 'rr'" in response.json()["message"]
    assert sum(r.status_code == 200 for r in responses) >= 1
    assert _replica_names(model_deployment_name("rr")) != [victim]


# --------------------------------------------------------------------------------------
# Configuration and the routes without Serve (no cluster needed)


def test_the_routes_run_in_process_with_the_local_backend(checkpoints: dict[str, Path]) -> None:
    """create_app(LocalBackend(...)) serves the same answers without Ray Serve."""
    from fastapi.testclient import TestClient

    from crag_integrations.ray import LocalBackend, create_app

    rr = EngineConfig(model=str(checkpoints["bert-rerank"]), device="cpu")
    tok = EngineConfig(model=str(checkpoints["bert-token"]), device="cpu")
    with TestClient(create_app(LocalBackend({"rr": rr, "tok": tok}))) as client:
        body = {"model": "rr", "query": QUERY, "documents": TEXTS}
        results = client.post("/v2/rerank", json=body).json()["results"]
        local = Reranker(model=rr).rank(QUERY, TEXTS)
        assert [r["index"] for r in results] == [r.index for r in local]
        assert [r["relevance_score"] for r in results] == approx([r.probability for r in local])
        wrong_head = client.post("/v2/rerank", json={**body, "model": "tok"})
        assert wrong_head.status_code == 422 and wrong_head.json()["field"] == "model"
        spans = client.post("/v1/highlight", json={"model": "tok", "query": QUERY, "texts": TEXTS})
        want = EvidenceHighlighter(model=tok).highlight(QUERY, TEXTS)
        assert [r["trimmed_text"] for r in spans.json()["results"]] == [
            h.trimmed_text for h in want
        ]


def test_served_model_options_map_onto_serve(checkpoints: dict[str, Path]) -> None:
    """Resources, fixed replicas and autoscaling become Serve deployment options."""
    engine = EngineConfig(model=str(checkpoints["bert-rerank"]))
    fixed = ServedModel(engine=engine, num_cpus=2, num_gpus=0.25, num_replicas=3)
    assert fixed.name == "bert-rerank"
    assert fixed.deployment_options() == {
        "name": "model-bert-rerank",
        "ray_actor_options": {"num_cpus": 2, "num_gpus": 0.25},
        "max_ongoing_requests": 64,
        "num_replicas": 3,
    }
    scaled = ServedModel(engine=engine, name="r", min_replicas=0, max_replicas=4)
    assert scaled.deployment_options()["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "target_ongoing_requests": 8.0,
    }
    with pytest.raises(ValueError, match="min_replicas"):
        ServedModel(engine=engine, min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="model name"):
        ServedModel(engine=engine, name="a#b")
    with pytest.raises(ValueError, match="unique"):
        build_app([engine, engine])


def test_the_example_serve_config_is_valid(checkpoints: dict[str, Path]) -> None:
    """examples/serve_config.yaml parses as a Serve config and its args build an app."""
    yaml = pytest.importorskip("yaml")
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).parent.parent / "examples" / "serve_config.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    (application,) = config.applications
    assert application.import_path == "crag_integrations.ray.serve:app_builder"
    args = AppArgs.model_validate(application.args)
    assert [m.name for m in args.models] == ["reranker", "grader", "highlighter"]
    local = dict(application.args)
    local["models"] = [
        {**m, "model": str(checkpoints["bert-rerank"])} for m in application.args["models"]
    ]
    app = app_builder(local)
    assert type(app).__name__ == "Application"
    with pytest.raises(ValueError, match="unknown engine option"):
        app_builder({"models": [{"model": "m", "engine": {"devic": "cpu"}}]})


def test_ray_is_not_imported_by_the_package() -> None:
    """`import crag_integrations` (and the corpus module) never imports Ray."""
    import subprocess
    import sys

    code = (
        "import sys, crag_integrations, crag_integrations.corpus;"
        "print(','.join(m for m in ('ray', 'fastapi') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == ""
