"""Load benchmark: throughput and latency of many concurrent callers on one model.

N caller threads (1, 4, 16, 64 by default) share a queue of reranking requests (one query,
a few chunks each) and send them one at a time; every request's latency is measured from
the moment its caller sends it to the moment the scores are back. Two systems score the
same requests on the same checkpoint:

- ``engine``: :func:`crag_integrations.get_engine` ``.score_pairs`` per request (score
  cache off, so every pair really runs the model; concurrent requests share forward
  passes through the engine's owner thread);
- ``st-per-request``: sentence-transformers ``CrossEncoder.predict`` per request, one
  ``CrossEncoder`` shared by every caller, as ``benchmarks/run.py`` builds the peers (its
  fast tokenizer is not thread-safe: a request that fails with "Already borrowed" is
  retried and counted).

Not a test: run ``python benchmarks/load.py`` (MiniLM-L6-sized random checkpoint, about a
minute on 2 CPU cores), ``--smoke`` for a seconds-sized run on a tiny model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

Request = tuple[str, list[str]]


def _peers_module() -> Any:
    """benchmarks/run.py: the checkpoint builder, workload and machine description."""
    spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).with_name("run.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_callers(
    score: Callable[[str, list[str]], Any], requests: Sequence[Request], callers: int
) -> dict[str, float]:
    """``callers`` threads send ``requests`` one at a time; throughput and latency."""
    pending = list(range(len(requests)))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    barrier = threading.Barrier(callers + 1)

    def caller() -> None:
        barrier.wait()
        while True:
            with lock:
                if not pending:
                    return
                index = pending.pop()
            query, texts = requests[index]
            sent = time.perf_counter()
            for _attempt in range(10):
                try:
                    score(query, texts)
                    break
                except RuntimeError:  # "Already borrowed" from a shared fast tokenizer
                    with lock:
                        errors[0] += 1
            with lock:
                latencies.append(time.perf_counter() - sent)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    pairs = sum(len(texts) for _, texts in requests)
    ordered = sorted(latencies)
    return {
        "callers": callers,
        "seconds": seconds,
        "requests_per_s": len(requests) / seconds,
        "pairs_per_s": pairs / seconds,
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
        "errors": errors[0],
    }


def make_systems(path: str, device: str) -> dict[str, Callable[[str, list[str]], Any]]:
    from sentence_transformers import CrossEncoder

    from crag_integrations import get_engine

    engine = get_engine(path, device=device, cache_size=0)
    engine.load()
    cross_encoder = CrossEncoder(path, device=device)
    return {
        "engine": lambda q, texts: engine.score_pairs([(q, t) for t in texts]),
        "st-per-request": lambda q, texts: cross_encoder.predict([(q, t) for t in texts]),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="minilm", help="tiny, minilm or modernbert")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--callers", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=5, help="texts per request")
    parser.add_argument("--min-words", type=int, default=10)
    parser.add_argument("--max-words", type=int, default=80)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every measurement, systems interleaved; the table shows each row's "
        "best round (the least disturbed on a shared machine), the JSON every round",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model and workload: seconds")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.arch, args.requests, args.chunks, args.callers = "tiny", 16, 3, "1,4"

    peers = _peers_module()
    from crag_integrations import release_engines
    from crag_integrations.engine.devices import resolve_device

    device = resolve_device(args.device)
    report: dict[str, Any] = {"machine": peers._machine(device), "args": vars(args), "rows": []}
    print(json.dumps(report["machine"]))
    workload = peers.make_workload(args.requests, args.chunks, args.min_words, args.max_words)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(
            peers.build_checkpoint(args.arch, Path(tmp) / args.arch, peers._tokenizer_dir(None))
        )
        systems = make_systems(path, device)
        for score in systems.values():  # warm up: first-call allocations, lazy imports
            for query, texts in workload[:2]:
                score(query, texts)
        print(
            f"\n{args.arch}, {args.requests} requests x {args.chunks} chunks "
            f"({args.min_words}-{args.max_words} words), {device}\n"
        )
        print(f"{'callers':>7} {'system':>15} {'pairs/s':>9} {'p50 ms':>9} {'p99 ms':>9} errors")
        for callers in (int(c) for c in args.callers.split(",")):
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
            for round_index in range(args.rounds):
                for name, score in systems.items():
                    row = {"system": name, "round": round_index}
                    row.update(run_callers(score, workload, callers))
                    rounds[name].append(row)
                    report["rows"].append(row)
            for name, rows in rounds.items():
                best = max(rows, key=lambda r: r["pairs_per_s"])
                print(
                    f"{callers:>7} {name:>15} {best['pairs_per_s']:>9.1f} "
                    f"{best['p50_ms']:>9.1f} {best['p99_ms']:>9.1f} {best['errors']:>6}"
                )
        release_engines()
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
