"""What the ONNX back-end's int8 mode costs trained checkpoints: ranking, grading, highlighting.

Every checkpoint given is measured three ways through the shared engine, on the same rows, in
one process: torch fp32 (the reference), ONNX Runtime fp32 (``backend="onnx"``: should equal
torch) and ONNX Runtime dynamic int8 (``backend="onnx", quantize="int8"``: faster, not exact).

* reranker: TREC DL19, BM25's top-100 of its 43 judged queries; per-query Kendall tau-b of the
  scores against torch fp32 (median, min), nDCG@10 / MRR@10 / MAP (grade >= 2 relevant), the
  paired per-query nDCG@10 difference with its 95% bootstrap interval (the noise band: an
  interval that holds 0 is a difference these 43 queries cannot tell from noise);
* grader: accuracy / F1 / MCC on the starter grader's two evaluation samples (held-out WikiQA +
  XQuAD, DL19 judged pairs), and how many predictions int8 flips, in which direction;
* highlighter: word precision / recall / F1 and span F1 at IoU 0.5 on its evaluation sample,
  at thresholds 0.5 and 0.7 (the starter's evaluation protocol in ``docs/training.md``).

The rows are the training recipe's own (``scripts/train_starter_models.py``, same seed) for
the recipe's documented evaluation settings (grader: 400 + 400 sampled rows at 128 tokens;
highlighter: 200 sampled rows, 256-token windows, stride 128; reranker: the checkpoint's own
window length), so the torch fp32 figures reproduce that recipe's results. Train the
checkpoints with the recipe (``docs/performance.md`` names the runs behind the recorded
numbers), then::

    python benchmarks/onnx_quality.py --data-dir ../shared/data \\
        --reranker /tmp/starter/reranker-distill+labels --grader /tmp/starter/grader \\
        --highlighter /tmp/starter/highlighter --out /tmp/starter/onnx_quality.json

Seconds per system are printed beside the quality figures; they are only a speed ratio when
the machine is otherwise idle (``benchmarks/run.py`` is the speed benchmark).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import train_starter_models as recipe  # the recipe's rows (not a package)

from crag_integrations import EngineConfig, Reranker, release_engines
from crag_integrations.config import Backend, Quantize
from crag_integrations.evaluation import (
    ClassificationMetrics,
    SpanExample,
    SpanMetrics,
    bootstrap_interval,
    classification_metrics,
    evaluate_ranking,
    kendall_tau,
    load_trec_dl,
    ndcg_at_k,
    paired_bootstrap_interval,
    reciprocal_rank_at_k,
    span_metrics,
    span_word_counts,
)
from crag_integrations.evaluation.checkpoints import (
    predict_labels,
    predict_spans,
    score_pairs,
)
from crag_integrations.evaluation.datasets import parse_span
from crag_integrations.evaluation.metrics import rank_candidates

#: (name, backend, quantize): the reference first.
SYSTEMS: tuple[tuple[str, Backend, Quantize | None], ...] = (
    ("torch-fp32", "torch", None),
    ("onnx-fp32", "onnx", None),
    ("onnx-int8", "onnx", "int8"),
)
REFERENCE = SYSTEMS[0][0]
Span = tuple[int, int]


class Stopwatch:
    """Seconds of one system's pass over the rows, its model loaded (and exported) beforehand.

    ``warm_up`` runs the system on one row first, so the clock times inference only; reading
    the seconds frees the system's engine before the next system loads its own.
    """

    def __init__(self, warm_up: Callable[[], object]) -> None:
        warm_up()
        self.start = time.perf_counter()

    def seconds(self) -> float:
        elapsed = time.perf_counter() - self.start
        release_engines()  # each system loads its own model; free it before the next
        return round(elapsed, 1)


def row_bootstrap(n: int, difference: Callable[[Sequence[int]], float]) -> list[float]:
    """95% interval of a metric difference over rows resampled with replacement (1,000 draws)."""
    return list(bootstrap_interval(n, difference, resamples=1000))


# ----------------------------------------------------------------------------- reranker


def score_each_pair_alone(
    model: Path,
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    max_length: int | None,
    backend: Backend,
    quantize: Quantize | None,
) -> list[float]:
    """The reranker's score of each pair called one at a time: no pair shares a batch."""
    config = EngineConfig(
        model=str(model), backend=backend, quantize=quantize, max_length=max_length, cache_size=0
    )
    reranker = Reranker(model=config)
    return [reranker.score(q, [d])[0] for q, d in zip(queries, documents, strict=True)]


def top_k(scores: Sequence[float], k: int = 10) -> set[int]:
    return set(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])


def measure_reranker(
    model: Path, data_dir: Path, max_length: int | None, quick: bool = False
) -> dict[str, Any]:
    queries, qrels = load_trec_dl(data_dir, split="trec-dl19")
    if quick:
        queries = [q.__class__(q.qid, q.query, q.doc_ids[:8], q.texts[:8]) for q in queries[:3]]
    flat_q = [q.query for q in queries for _ in q.doc_ids]
    flat_d = [t for q in queries for t in q.texts]
    bounds, start = [], 0
    for q in queries:
        bounds.append((start, start + len(q.doc_ids)))
        start += len(q.doc_ids)
    judged = [q for q in queries if q.qid in qrels]
    out: dict[str, Any] = {"queries": len(judged), "pairs": len(flat_q), "systems": {}}
    ndcg_per_query: dict[str, list[float]] = {}
    mrr_per_query: dict[str, list[float]] = {}
    scores_of: dict[str, list[float]] = {}
    # int8 once more with every pair in a forward pass of its own: dynamic int8 takes one
    # activation scale per batch, so this separates what batch-mates do from what int8 does.
    systems = [
        *((name, backend, quantize, score_pairs) for name, backend, quantize in SYSTEMS),
        ("onnx-int8-each-pair-alone", "onnx", "int8", score_each_pair_alone),
    ]
    for name, backend, quantize, scorer in systems:
        run_on = partial(scorer, model, max_length=max_length, backend=backend, quantize=quantize)
        clock = Stopwatch(partial(run_on, flat_q[:1], flat_d[:1]))
        scores = run_on(flat_q, flat_d)
        entry: dict[str, Any] = {"seconds": clock.seconds()}
        run = rank_candidates(queries, scores)
        entry.update(evaluate_ranking(run, qrels, k=10, relevance_threshold=2).as_dict())
        ndcg_per_query[name] = [ndcg_at_k(run[q.qid], qrels[q.qid]) for q in judged]
        mrr_per_query[name] = [
            reciprocal_rank_at_k(run[q.qid], qrels[q.qid], relevance_threshold=2) for q in judged
        ]
        entry["per_query_ndcg@10"] = ndcg_per_query[name]
        scores_of[name] = scores
        if name != REFERENCE:
            reference = scores_of[REFERENCE]
            every_tau = [kendall_tau(reference[a:b], scores[a:b]) for a, b in bounds]
            taus = [t for t in every_tau if not math.isnan(t)]  # nan: a list of equal scores
            diffs = [
                x - y for x, y in zip(ndcg_per_query[name], ndcg_per_query[REFERENCE], strict=True)
            ]
            mrr_diffs = [
                x - y for x, y in zip(mrr_per_query[name], mrr_per_query[REFERENCE], strict=True)
            ]
            entry.update(
                max_abs_score_diff=max(abs(x - y) for x, y in zip(scores, reference, strict=True)),
                kendall_tau_median=statistics.median(taus),
                kendall_tau_min=min(taus),
                kendall_tau_mean=statistics.fmean(taus),
                top10_overlap_mean=statistics.fmean(
                    len(top_k(reference[a:b]) & top_k(scores[a:b])) / min(10, b - a)
                    for a, b in bounds
                ),
                ndcg10_diff=statistics.fmean(diffs),
                ndcg10_diff_ci95=list(paired_bootstrap_interval(diffs)),
                queries_ndcg10_up_down=[
                    sum(d > 1e-12 for d in diffs),
                    sum(d < -1e-12 for d in diffs),
                ],
                mrr10_diff=statistics.fmean(mrr_diffs),
                mrr10_diff_ci95=list(paired_bootstrap_interval(mrr_diffs)),
                per_query_kendall_tau=every_tau,
                queries_without_tau=len(every_tau) - len(taus),
            )
        if name == "onnx-int8-each-pair-alone":
            batched = scores_of["onnx-int8"]
            entry["kendall_tau_vs_batched_int8_median"] = statistics.median(
                t for a, b in bounds if not math.isnan(t := kendall_tau(batched[a:b], scores[a:b]))
            )
            entry["max_abs_score_diff_vs_batched_int8"] = max(
                abs(x - y) for x, y in zip(scores, batched, strict=True)
            )
        out["systems"][name] = entry
        shown = {k: v for k, v in entry.items() if not k.startswith("per_query")}
        print(f"reranker {name}: {json.dumps(shown)}", flush=True)
    return out


# ------------------------------------------------------------------------------- grader


def grade_metrics(
    gold: Sequence[str], predicted: Sequence[str], names: Sequence[str], at: Sequence[int]
) -> ClassificationMetrics:
    return classification_metrics(
        [gold[i] for i in at], [predicted[i] for i in at], labels=names, positive_label=names[-1]
    )


def mcc_difference(
    gold: Sequence[str], new: Sequence[str], old: Sequence[str], names: Sequence[str]
) -> Callable[[Sequence[int]], float]:
    return lambda at: (
        grade_metrics(gold, new, names, at).mcc - grade_metrics(gold, old, names, at).mcc
    )


def measure_grader(
    model: Path, data_dir: Path, seed: int, max_length: int, quick: bool = False
) -> dict[str, Any]:
    _, held_out, dl19 = recipe.grader_splits(data_dir, seed, eval_rows=12 if quick else 400)
    config = json.loads((model / "config.json").read_text())
    names = [str(config["id2label"][k]) for k in sorted(config["id2label"], key=int)]
    out: dict[str, Any] = {"labels": names}
    for sample, rows in (("held_out", held_out), ("dl19_judged", dl19)):
        gold = [str(r["label"]) for r in rows]
        queries = [str(r["query"]) for r in rows]
        documents = [str(r["document"]) for r in rows]
        if not set(gold) <= set(names):
            raise SystemExit(f"gold labels {sorted(set(gold))} are not the grader's {names}")
        every_row = range(len(rows))
        section: dict[str, Any] = {"rows": len(rows), "systems": {}}
        labels_of: dict[str, list[str]] = {}
        for name, backend, quantize in SYSTEMS:
            grade = partial(
                predict_labels, model, max_length=max_length, backend=backend, quantize=quantize
            )
            clock = Stopwatch(partial(grade, queries[:1], documents[:1]))
            labels = grade(queries, documents)
            entry: dict[str, Any] = {"seconds": clock.seconds()}
            entry.update(grade_metrics(gold, labels, names, every_row).as_dict())
            labels_of[name] = labels
            if name != REFERENCE:
                reference = labels_of[REFERENCE]
                flipped = [i for i in every_row if reference[i] != labels[i]]
                entry.update(
                    flipped=len(flipped),
                    flips_now_right=sum(labels[i] == gold[i] for i in flipped),
                    flips_now_wrong=sum(reference[i] == gold[i] for i in flipped),
                    mcc_diff_ci95=row_bootstrap(
                        len(rows), mcc_difference(gold, labels, reference, names)
                    ),
                )
            section["systems"][name] = entry
            print(f"grader {sample} {name}: {json.dumps(entry)}", flush=True)
        out[sample] = section
    return out


# -------------------------------------------------------------------------- highlighter

#: The span figures reported per system (all rows, the acl-verbatim harness's conventions).
SPAN_FIGURES = (
    "word_precision",
    "word_recall",
    "word_f1",
    "span_f1@0.5",
    "containment_f1@0.5",
    "num_predicted_spans",
)


def span_scores(
    contexts: Sequence[str],
    gold: Sequence[list[Span]],
    predicted: Sequence[list[Span]],
    at: Sequence[int],
) -> SpanMetrics:
    return span_metrics([SpanExample(contexts[i], gold[i], predicted[i]) for i in at])


def word_f1(counts: Sequence[tuple[int, ...]], at: Sequence[int]) -> float:
    tp, fp, fn = (sum(counts[i][k] for i in at) for k in range(3))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def word_f1_difference(
    new: Sequence[tuple[int, ...]], old: Sequence[tuple[int, ...]]
) -> Callable[[Sequence[int]], float]:
    return lambda at: word_f1(new, at) - word_f1(old, at)


def measure_highlighter(
    model: Path, data_dir: Path, seed: int, max_length: int, quick: bool = False
) -> dict[str, Any]:
    _, rows = recipe.highlighter_splits(data_dir, seed, eval_rows=6 if quick else 200)
    queries = [str(r["query"]) for r in rows]
    contexts = [str(r["context"]) for r in rows]
    gold = [
        [parse_span(s, len(c)) for s in r["spans"] or []]
        for r, c in zip(rows, contexts, strict=True)
    ]
    every_row = range(len(rows))
    out: dict[str, Any] = {"rows": len(rows), "gold_spans": sum(len(g) for g in gold)}
    for threshold in (0.5, 0.7):
        section: dict[str, Any] = {}
        spans_of: dict[str, list[list[Span]]] = {}
        counts_of: dict[str, list[tuple[int, ...]]] = {}
        for name, backend, quantize in SYSTEMS:
            highlight = partial(
                predict_spans,
                model,
                threshold=threshold,
                max_length=max_length,
                stride=128,
                backend=backend,
                quantize=quantize,
            )
            clock = Stopwatch(partial(highlight, queries[:1], contexts[:1]))
            spans = highlight(queries, contexts)
            entry: dict[str, Any] = {"seconds": clock.seconds()}
            values = span_scores(contexts, gold, spans, every_row).as_dict()
            entry.update({k: values[k] for k in SPAN_FIGURES})
            spans_of[name] = spans
            counts_of[name] = [span_word_counts(contexts[i], gold[i], spans[i]) for i in every_row]
            if name != REFERENCE:
                reference = spans_of[REFERENCE]
                entry.update(
                    rows_with_other_spans=sum(reference[i] != spans[i] for i in every_row),
                    word_f1_diff_ci95=row_bootstrap(
                        len(rows), word_f1_difference(counts_of[name], counts_of[REFERENCE])
                    ),
                )
            section[name] = entry
            print(f"highlighter t={threshold} {name}: {json.dumps(entry)}", flush=True)
        out[str(threshold)] = section
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--reranker", type=Path, help="one-logit cross-encoder checkpoint")
    parser.add_argument("--grader", type=Path, help="sequence-classification grader checkpoint")
    parser.add_argument("--highlighter", type=Path, help="token-classification checkpoint")
    parser.add_argument("--seed", type=int, default=12, help="the training recipe's seed")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--quick", action="store_true", help="a few rows each (a smoke run)")
    a = parser.parse_args(argv)
    if not (a.reranker or a.grader or a.highlighter):
        parser.error("give at least one of --reranker, --grader, --highlighter")

    import onnxruntime
    import torch

    results: dict[str, Any] = {
        "quick": a.quick,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
    measured = (
        ("reranker", a.reranker, lambda m: measure_reranker(m, a.data_dir, None, a.quick)),
        ("grader", a.grader, lambda m: measure_grader(m, a.data_dir, a.seed, 128, a.quick)),
        (
            "highlighter",
            a.highlighter,
            lambda m: measure_highlighter(m, a.data_dir, a.seed, 256, a.quick),
        ),
    )
    for role, model, measure in measured:
        if model is not None:
            results[role] = {"model": str(model), **measure(model)}
            a.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {a.out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
