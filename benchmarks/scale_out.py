"""Scale-out benchmark: the local engine against the Ray Serve app and Ray Data, side by side.

One run, one MiniLM-L6-sized checkpoint with random weights (built as ``benchmarks/run.py``
builds it), one workload of rerank requests (a query and a few texts each), score cache off:

- ``local``: :meth:`crag_integrations.Reranker.arank` in this process, N concurrent asyncio
  callers sharing one engine (what a Serve replica runs per request);
- ``serve-1`` / ``serve-2``: the :func:`crag_integrations.ray.build_app` application with 1
  replica of 2 CPUs, then 2 replicas of 1 CPU each (the same 2 cores), N concurrent HTTP
  clients (``httpx.AsyncClient``) posting Cohere ``/v2/rerank`` requests to Serve on
  127.0.0.1.

For each concurrency the local engine runs right before the Serve app, so every ratio
compares two cells that saw the same load (the machine this was written on is shared).
A cell sends at most ``--requests`` requests and starts none after ``--seconds``; it reports
pairs/s, p50/p99 latency (send to parsed answer) and the ratio to the local cell. Every
answer is checked against the local engine's for the same request: HTTP 200, every document
present exactly once, every score within 1e-5 (the largest difference is printed); a
failure is counted and shown, never dropped, and makes the exit status 1.

Then the per-request overhead of the hop, one caller: a one-text and a workload-sized
request locally, through the ingress's ``DeploymentHandle`` and over HTTP, and HTTP
``/health`` (Serve's proxy and the ingress, no model). Then corpus scoring:
:func:`crag_integrations.corpus.score_file` on the local engine, and with ``RayRowScorer``
(Ray Data's ``score_dataset``) on 1 actor of 2 CPUs and on 2 actors of 1 CPU, every output
row checked against the local output; each system also runs a one-batch job, which gives
its start-up cost (a Ray job starts its actors and loads a model in each).

Ray runs locally (``num_cpus=2``, no dashboard, 127.0.0.1 only, its own temp folder) and is
shut down at the end; all temp files are removed. Not a test: ``python
benchmarks/scale_out.py --quick`` takes a few minutes on 2 cores; without ``--quick`` the
cells and the corpus are larger. Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file in the user's home

Request = tuple[str, list[str]]
# A response reduced to what is compared: document index -> relevance probability.
Scores = dict[int, float]

APP = "crag-bench"
MODEL = "minilm"
TOLERANCE = 1e-5  # replicas run torch with other thread counts: float32 sums differ slightly


def _peers_module() -> Any:
    """benchmarks/run.py: the checkpoint builder and the workload generator."""
    spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).with_name("run.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def load1() -> float:
    """The 1-minute load average (the machine is shared: recorded with every number)."""
    return os.getloadavg()[0]


# ------------------------------------------------------------------------------- cells


@dataclass
class Cell:
    """One system at one concurrency: what came back and how fast."""

    system: str
    concurrency: int
    seconds: float = 0.0
    pairs: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    max_diff: float = 0.0
    load: float = 0.0
    phase: str = ""  # the serving system this cell was measured next to

    def p(self, q: float) -> float:
        """The ``q``-th latency percentile in ms (NaN without answers)."""
        return percentile(self.latencies, q) * 1e3 if self.latencies else float("nan")

    def summary(self) -> dict[str, Any]:
        """The cell as plain values."""
        return {
            "system": self.system,
            "next_to": self.phase,
            "clients": self.concurrency,
            "requests": self.requests,
            "pairs_per_s": round(self.pairs_per_s, 2),
            "p50_ms": round(self.p(50), 1),
            "p99_ms": round(self.p(99), 1),
            "failures": self.failures,
            "max_diff": self.max_diff,
            "load": round(self.load, 2),
        }

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


def check(scores: Scores, texts: int, want: Scores | None) -> tuple[str | None, float]:
    """Whether ``scores`` is complete and equal to ``want``: (failure or None, max diff)."""
    if sorted(scores) != list(range(texts)):
        return f"indices {sorted(scores)} are not 0..{texts - 1}", 0.0
    if want is None:
        return None, 0.0
    diff = max(abs(scores[i] - want[i]) for i in range(texts))
    if diff > TOLERANCE:
        return f"score differs from local by {diff:.2e}", diff
    return None, diff


@dataclass
class Checks:
    """The local engine's answers, and the answers waiting for one to be compared with."""

    reference: dict[int, Scores] = field(default_factory=dict)
    pending: list[tuple[Cell, int, Scores]] = field(default_factory=list)

    def record(self, cell: Cell, key: int, scores: Scores, texts: int) -> str | None:
        """Check an answer now (or later, when the local engine has not seen ``key``)."""
        want = self.reference.get(key)
        if want is None and cell.system != "local":
            failure, _ = check(scores, texts, None)
            if failure is None:
                self.pending.append((cell, key, scores))
            return failure
        failure, diff = check(scores, texts, want)
        cell.max_diff = max(cell.max_diff, diff)
        if failure is None and want is None:
            self.reference[key] = scores
        return failure

    def settle(self, pool: Sequence[Request], local: Callable[[Request], Scores]) -> None:
        """Score the pending answers' requests locally and compare."""
        for cell, key, scores in self.pending:
            if key not in self.reference:
                self.reference[key] = local(pool[key])
            failure, diff = check(scores, len(pool[key][1]), self.reference[key])
            cell.max_diff = max(cell.max_diff, diff)
            if failure is not None:
                cell.failures.append(f"request for pool item {key}: {failure}")
                cell.pairs -= len(pool[key][1])
        self.pending.clear()


async def run_cell(
    system: str,
    send: Callable[[Request], Awaitable[Scores]],
    pool: Sequence[Request],
    checks: Checks,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
) -> Cell:
    """``concurrency`` callers send requests ``0, 1, ...`` of ``pool`` (cyclically) until
    ``max_requests`` are sent or ``max_seconds`` have passed; every answer is checked
    against the local engine's for the same request."""
    cell = Cell(system, concurrency)
    next_request = 0
    start = time.perf_counter()
    deadline = start + max_seconds

    async def caller() -> None:
        nonlocal next_request
        while next_request < max_requests and time.perf_counter() < deadline:
            number = next_request
            next_request += 1
            key = number % len(pool)
            query, texts = pool[key]
            sent = time.perf_counter()
            try:
                scores = await send((query, texts))
            except Exception as exc:  # a failure is data here: counted and shown
                cell.failures.append(f"request {number}: {type(exc).__name__}: {exc}")
                continue
            cell.latencies.append(time.perf_counter() - sent)
            failure = checks.record(cell, key, scores, len(texts))
            if failure is not None:
                cell.failures.append(f"request {number}: {failure}")
                continue
            cell.pairs += len(texts)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    cell.seconds = time.perf_counter() - start
    cell.load = load1()
    return cell


def interleaved_latency(
    calls: dict[str, Callable[[], Any]], repeats: int
) -> dict[str, tuple[float, float]]:
    """(median, min) seconds of each call, one caller; the calls take turns, so that every
    one of them sees the same background load (the machine may be shared)."""
    for call in calls.values():  # warm-up
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


# ----------------------------------------------------------------------------- systems


def local_sender(config: Any) -> Callable[[Request], Awaitable[Scores]]:
    """The local engine, through the role a Serve replica runs per request."""
    from crag_integrations import Reranker

    reranker = Reranker(model=config)

    async def send(request: Request) -> Scores:
        ranked = await reranker.arank(*request)
        return {r.index: r.probability for r in ranked}

    return send


def local_scorer(config: Any) -> Callable[[Request], Scores]:
    """The local engine, called synchronously (reference answers, the hop's baseline)."""
    from crag_integrations import Reranker

    reranker = Reranker(model=config)

    def score(request: Request) -> Scores:
        return {r.index: r.probability for r in reranker.rank(*request)}

    return score


def measure_hop(
    local: Callable[[Request], Scores], handle: Any, url: str, request: Request, repeats: int
) -> dict[str, list[float]]:
    """[median, min] ms, one caller, of a one-text rerank and of ``request``: locally,
    through the ingress's handle, over HTTP; and of HTTP ``/health`` (Serve's proxy and
    the ingress, no model replica)."""
    import httpx

    tiny: Request = ("what causes rain?", ["Rain forms when water vapour condenses."])
    calls: dict[str, Callable[[], Any]] = {}
    # trust_env=False: no proxy from the environment may see loopback traffic.
    with httpx.Client(timeout=60, trust_env=False) as client:

        def add(size: str, query: str, texts: list[str]) -> None:
            body = {"model": MODEL, "query": query, "documents": texts}
            calls[f"local, {size}"] = lambda: local((query, texts))
            calls[f"handle, {size}"] = lambda: handle.call.remote(
                MODEL, "rerank", query, texts
            ).result()
            calls[f"http, {size}"] = lambda: client.post(
                f"{url}/v2/rerank", json=body
            ).raise_for_status()

        add("1 text", *tiny)
        add(f"{len(request[1])} texts", *request)
        calls["http /health"] = lambda: client.get(f"{url}/health").raise_for_status()
        hop = interleaved_latency(calls, repeats)
    return {name: [round(m * 1e3, 2), round(b * 1e3, 2)] for name, (m, b) in hop.items()}


async def measure_http(
    system: str, url: str, concurrency: Sequence[int], run: Callable[..., Awaitable[None]]
) -> None:
    """``run(system, send)`` with an HTTP client holding enough connections."""
    import httpx

    limits = httpx.Limits(max_connections=max(concurrency) + 8)
    async with httpx.AsyncClient(limits=limits, timeout=600, trust_env=False) as client:
        await run(system, http_sender(client, url))


def http_sender(client: Any, url: str) -> Callable[[Request], Awaitable[Scores]]:
    """A Cohere v2 rerank request to the Serve app."""

    async def send(request: Request) -> Scores:
        query, texts = request
        body = {"model": MODEL, "query": query, "documents": texts}
        response = await client.post(f"{url}/v2/rerank", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        results = response.json()["results"]
        if len(results) != len(texts):
            raise RuntimeError(f"{len(results)} results for {len(texts)} documents")
        return {r["index"]: r["relevance_score"] for r in results}

    return send


def start_ray(temp_dir: str) -> Any:
    """A local Ray instance on 127.0.0.1 with 2 logical CPUs and no dashboard."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ray
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
    )
    return ray


def actor_threads(ray: Any) -> dict[str, int]:
    """torch's thread count in an actor reserving 1 and 2 CPUs (Ray sets
    ``OMP_NUM_THREADS`` from ``num_cpus``): what a replica or Ray Data actor gets."""

    class Threads:
        def count(self) -> int:
            import torch

            return int(torch.get_num_threads())

    actor_class = ray.remote(Threads)
    counts = {}
    for cpus in (1.0, 2.0):
        actor = actor_class.options(num_cpus=cpus).remote()
        counts[f"{cpus:g} CPU"] = ray.get(actor.count.remote())
        ray.kill(actor)
    return counts


def deploy(serve: Any, config: Any, replicas: int) -> Any:
    """The Serve app with ``replicas`` model replicas sharing 2 CPUs; the ingress handle."""
    from crag_integrations.ray import ServedModel, build_app

    model = ServedModel(
        name=MODEL,
        engine=config,
        num_replicas=replicas,
        num_cpus=2 / replicas,
        max_ongoing_requests=128,  # above the 64 clients: none waits in the router
    )
    return serve.run(build_app([model]), name=APP, route_prefix="/")


# ----------------------------------------------------------------------------- corpus


def corpus_rows(pool: Sequence[Request]) -> list[dict[str, Any]]:
    """The workload as corpus rows (query, text, ids)."""
    return [
        {"doc_id": f"q{q}-d{d}", "qid": q, "query": query, "text": text}
        for q, (query, texts) in enumerate(pool)
        for d, text in enumerate(texts)
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSONL file."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def compare_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> tuple[int, float]:
    """(rows missing, extra, reordered or wrong; max score difference) of ``got``."""
    bad = abs(len(got) - len(want))
    diff = 0.0
    for a, b in zip(got, want, strict=False):
        same_row = all(a.get(k) == b[k] for k in ("doc_id", "qid", "query", "text"))
        row_diff = abs(a["probability"] - b["probability"])
        diff = max(diff, row_diff, abs(a["score"] - b["score"]))
        if not same_row or a["num_windows"] != b["num_windows"] or row_diff > TOLERANCE:
            bad += 1
    return bad, diff


# ------------------------------------------------------------------------------ report


def table(cells: Sequence[Cell]) -> list[str]:
    """The serving table as Markdown rows; each ratio is to the local cell measured just
    before, at the same concurrency."""
    lines = [
        "| system | clients | requests | pairs/s | p50 ms | p99 ms | vs local | failed "
        "| max diff | load 1m |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    local: Cell | None = None
    for c in cells:
        if c.system == "local":
            local = c
        ratio = c.pairs_per_s / local.pairs_per_s if local and local.pairs_per_s else 0.0
        name = c.system if c.system != "local" else f"local (next to {c.phase})"
        lines.append(
            f"| {name} | {c.concurrency} | {c.requests} | {c.pairs_per_s:.1f} | "
            f"{c.p(50):.0f} | {c.p(99):.0f} | {ratio:.2f}x | {len(c.failures)} | "
            f"{c.max_diff:.1e} | {c.load:.1f} |"
        )
    return lines


def machine() -> dict[str, Any]:
    """The machine and versions, for the report."""
    import ray
    import torch
    import transformers

    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# -------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--texts", type=int, default=None, help="texts per request")
    parser.add_argument("--requests", type=int, default=None, help="most requests per cell")
    parser.add_argument("--seconds", type=float, default=None, help="most seconds per cell")
    parser.add_argument("--corpus", type=int, default=None, help="corpus rows to score")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: packaged)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    quick = args.quick
    texts_per_request = args.texts or (4 if quick else 8)
    max_requests = args.requests or (96 if quick else 512)
    max_seconds = args.seconds or (10.0 if quick else 45.0)
    corpus_size = args.corpus or (512 if quick else 2400)
    min_words, max_words = (10, 30) if quick else (20, 60)

    peers = _peers_module()
    work = Path(tempfile.mkdtemp(prefix="scale-out-"))
    ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray puts sockets here
    ray: Any = None
    results: dict[str, Any] = {"machine": {}, "cells": [], "hop": {}, "corpus": []}
    try:
        from crag_integrations import EngineConfig, release_engines

        checkpoint = peers.build_checkpoint(
            "minilm", work / "minilm", peers._tokenizer_dir(args.tokenizer)
        )
        # Cache off: every pair runs the model, in every system.
        config = EngineConfig(model=str(checkpoint), device="cpu", cache_size=0)
        pool_size = max(max_requests, corpus_size // texts_per_request)
        pool = [
            (query, texts)
            for query, texts in peers.make_workload(
                pool_size, texts_per_request, min_words, max_words, seed=1
            )
        ]
        print(
            f"workload: {pool_size} requests x {texts_per_request} texts of "
            f"{min_words}-{max_words} words; cells of <= {max_requests} requests / "
            f"{max_seconds:g} s",
            flush=True,
        )

        checks = Checks()
        cells: list[Cell] = []
        local_send = local_sender(config)
        local = local_scorer(config)

        async def warm_up(send: Callable[[Request], Awaitable[Scores]]) -> None:
            # First-call allocations and lazy imports; concurrent, to reach every replica.
            await asyncio.gather(*(send(request) for request in pool[:8]))

        async def measure(serving: str, send: Callable[[Request], Awaitable[Scores]]) -> None:
            """Per concurrency: the local engine, then ``serving``, back to back, so that
            each ratio compares two cells that saw the same load on the shared machine."""
            await warm_up(local_send)
            await warm_up(send)
            for concurrency in args.concurrency:
                for system, sender in (("local", local_send), (serving, send)):
                    cell = await run_cell(
                        system,
                        sender,
                        pool,
                        checks,
                        concurrency=concurrency,
                        max_requests=max(max_requests, concurrency),
                        max_seconds=max_seconds,
                    )
                    cell.phase = serving
                    cells.append(cell)
                    print(table(cells)[-1], flush=True)

        ray = start_ray(ray_temp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from ray import serve as serve_module
        serve: Any = serve_module  # partly untyped
        warnings.filterwarnings("ignore", module=r"ray\..*")  # its own internals
        for name in ("ray", "ray.serve", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
        results["machine"] = machine()
        results["machine"]["actor_torch_threads"] = actor_threads(ray)
        print(json.dumps(results["machine"]), flush=True)

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        print("\n".join(table([])), flush=True)
        for replicas in (1, 2):
            started = time.perf_counter()
            handle = deploy(serve, config, replicas)
            deployed = time.perf_counter() - started
            results[f"serve-{replicas}_deploy_s"] = round(deployed, 1)
            time.sleep(3)  # let the replicas' start-up work (imports, first health checks) end
            asyncio.run(measure_http(f"serve-{replicas}", url, args.concurrency, measure))
            if replicas == 1:
                results["hop"] = measure_hop(local, handle, url, pool[0], 30 if quick else 100)
                results["hop_load"] = round(load1(), 2)
            serve.delete(APP)
        serve.shutdown()
        checks.settle(pool, local)

        print("\nserving (pairs/s; latency from send to parsed answer):")
        print("\n".join(table(cells)))
        for cell in cells:
            for failure in cell.failures[:3]:
                print(f"  {cell.system} x {cell.concurrency}: {failure}")
        print(f"\nhop, one caller, ms median / min (load {results['hop_load']}):")
        print("\n".join(f"  {name}: {m} / {b}" for name, (m, b) in results["hop"].items()))
        results["cells"] = [cell.summary() for cell in cells]

        print("\ncorpus scoring (score_file, batch 64 rows):", flush=True)
        results["corpus"] = score_corpus(ray, config, pool, corpus_size, work, batch_size=64)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        release_engines()
    finally:
        if ray is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ray.shutdown()
        shutil.rmtree(ray_temp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    failed = sum(len(c["failures"]) for c in results["cells"])
    failed += sum(row["bad_rows"] for row in results["corpus"])
    print(f"\nresponses or rows failing the check: {failed}; load now {load1():.1f}")
    return 1 if failed else 0


def score_corpus(
    ray: Any, config: Any, pool: Sequence[Request], size: int, work: Path, batch_size: int
) -> list[dict[str, Any]]:
    """``score_file`` on the local engine, then on Ray Data with 1 actor of 2 CPUs and 2
    actors of 1 CPU; every output checked row by row against the local output.

    Each system also scores one batch on its own first: that job's time is mostly the
    start-up a Ray job pays every time (its actors start and each loads the model)."""
    from crag_integrations.corpus import ScoreSpec, score_file, score_rows_locally
    from crag_integrations.ray import RayRowScorer

    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = corpus_rows(pool)[:size]
    sources = {"small": work / "small.jsonl", "full": work / "rows.jsonl"}
    for name, path in sources.items():
        with path.open("w", encoding="utf-8") as handle:
            for row in rows[: batch_size if name == "small" else size]:
                handle.write(json.dumps(row) + "\n")
    spec = ScoreSpec(model=config)
    # The local engine runs before each Ray job, so each ratio compares two runs that saw
    # the same load on the shared machine.
    runs: list[tuple[str, Any]] = [
        ("local", score_rows_locally),
        ("ray-data-1", RayRowScorer(address="local", actors=1, num_cpus=2.0)),
        ("local", score_rows_locally),
        ("ray-data-2", RayRowScorer(address="local", actors=2, num_cpus=1.0)),
    ]
    want: list[dict[str, Any]] = []
    report = []
    lines = [
        "| system | rows | seconds | pairs/s | vs local | one-batch job s | bad rows | max diff "
        "| load 1m |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    local_rate = 0.0
    for name, scorer in runs:
        seconds = {}
        for which, source in sources.items():
            output = work / f"{name}-{which}.jsonl"
            start = time.perf_counter()
            score_file(spec, source, output, batch_size=batch_size, progress=None, scorer=scorer)
            seconds[which] = time.perf_counter() - start
        got = read_jsonl(work / f"{name}-full.jsonl")
        for which in sources:
            (work / f"{name}-{which}.jsonl").unlink()  # the next run of ``name`` starts anew
        rate = len(rows) / seconds["full"]
        if name == "local":
            want = want or got
            local_rate = rate
        bad, diff = compare_rows(got, want)
        entry = {
            "system": name,
            "rows": len(got),
            "seconds": round(seconds["full"], 2),
            "pairs_per_s": round(rate, 2),
            "one_batch_job_s": round(seconds["small"], 2),
            "bad_rows": bad,
            "max_diff": diff,
            "load": round(load1(), 2),
        }
        report.append(entry)
        print(
            f"| {name} | {len(got)} | {seconds['full']:.1f} | {rate:.1f} | "
            f"{rate / local_rate:.2f}x | {seconds['small']:.1f} | {bad} | {diff:.1e} | "
            f"{entry['load']:.1f} |",
            flush=True,
        )
    return report


if __name__ == "__main__":
    sys.exit(main())
