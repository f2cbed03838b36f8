"""Command line: ``crag-integrations <subcommand> ...``.

A thin dispatcher: each subcommand parses its arguments and calls one function of
:mod:`crag_integrations.training` (training) or :mod:`crag_integrations.evaluation` (data
loading, metrics, and checkpoints measured through the roles); nothing here touches a model
directly. Results are printed as JSON on stdout; progress goes to stderr.

Example:
    >>> from crag_integrations.cli import build_parser
    >>> build_parser().parse_args(["evaluate-reranker", "--first-stage"]).command
    'evaluate-reranker'
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from crag_integrations.config import EngineConfig
from crag_integrations.corpus import add_score_arguments, score_from_args
from crag_integrations.engine.progress import disable_progress_bars
from crag_integrations.errors import DataError, IncompatibleModelError, ModelUnavailableError

__all__ = ["build_parser", "main"]


def _add_training_options(parser: argparse.ArgumentParser, *, batch_size: int, lr: float) -> None:
    parser.add_argument("--data", required=True, help="training rows: .jsonl/.json/.csv/.parquet")
    parser.add_argument("--base-model", required=True, help="checkpoint directory to start from")
    parser.add_argument("--output-dir", required=True, help="where the checkpoint is saved")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N steps")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--learning-rate", type=float, default=lr)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_window_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-length", type=int, default=None, help="tokens per window (default: the model's)"
    )


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    parser.add_argument(
        "--backend", choices=["torch", "onnx"], default="torch", help="engine back-end"
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="with --backend onnx: the dynamically quantised int8 graph (CPU)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="crag-integrations", description="Train and evaluate rerankers, graders, highlighters."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-reranker", help="fine-tune a cross-encoder reranker")
    _add_training_options(p, batch_size=32, lr=2e-5)
    p.add_argument("--objective", choices=["bce", "distill"], default="bce")
    p.add_argument("--hard-negatives", type=int, default=0, help="negatives mined per positive")
    p.add_argument("--bi-encoder", default=None, help="bi-encoder for mining / teacher scores")
    p.add_argument("--pos-weight", type=float, default=None, help="default: negatives/positives")
    p.add_argument("--teacher-scale", type=float, default=20.0)
    p.add_argument("--label-boost", type=float, default=0.0)
    p.add_argument("--max-length", type=int, default=256)

    p = sub.add_parser("train-grader", help="fine-tune a sequence-classification grader")
    _add_training_options(p, batch_size=32, lr=3e-5)
    p.add_argument("--labels", nargs="+", default=None, help="label names in id order")
    p.add_argument(
        "--class-weights", nargs="+", default=None, help="one weight per label, or 'balanced'"
    )
    p.add_argument("--max-length", type=int, default=256)

    p = sub.add_parser("train-highlighter", help="fine-tune a token-classification highlighter")
    _add_training_options(p, batch_size=16, lr=5e-5)
    p.add_argument("--class-weights", nargs="+", default=None, help="O and EVIDENCE, or 'balanced'")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--stride", type=int, default=128)

    p = sub.add_parser("evaluate-reranker", help="nDCG@k, MRR@k, MAP on a TREC-style folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="cross-encoder checkpoint directory")
    which.add_argument("--bi-encoder", help="rank by this bi-encoder's cosine similarity")
    which.add_argument("--first-stage", action="store_true", help="keep the given (BM25) order")
    p.add_argument("--data-dir", default=None, help="data folder (default: $CRAG_DATA_DIR)")
    p.add_argument("--split", default="trec-dl19", help="sub-folder with bm25_top100.json, qrels")
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--relevance-threshold",
        type=int,
        default=1,
        help="grade counted relevant by MRR/MAP (use 2 for TREC DL passage judgments)",
    )
    _add_window_option(p)
    _add_eval_options(p)

    p = sub.add_parser("evaluate-grader", help="accuracy, precision, recall, F1, MCC")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="rows with query, document, label")
    p.add_argument("--positive-label", default=None)
    _add_window_option(p)
    _add_eval_options(p)

    p = sub.add_parser("evaluate-highlighter", help="word/span/containment metrics, all rows")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="rows with query, context, spans")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--merge-gap-chars", type=int, default=20)
    p.add_argument("--min-span-chars", type=int, default=10)
    _add_window_option(p)
    p.add_argument("--stride", type=int, default=128)
    _add_eval_options(p)
    p = sub.add_parser("score", help="score (query, text) rows: rerank, grade or highlight")
    add_score_arguments(p)
    return parser


def _class_weights(values: Sequence[str] | None) -> Any:
    if values is None:
        return None
    if list(values) == ["balanced"]:
        return "balanced"
    return [float(v) for v in values]


def _train_reranker(a: argparse.Namespace) -> dict[str, Any]:
    from crag_integrations.training import train_reranker

    return train_reranker(
        a.data,
        a.base_model,
        a.output_dir,
        objective=a.objective,
        hard_negatives=a.hard_negatives,
        bi_encoder=a.bi_encoder,
        pos_weight=a.pos_weight,
        teacher_scale=a.teacher_scale,
        label_boost=a.label_boost,
        epochs=a.epochs,
        max_steps=a.max_steps,
        batch_size=a.batch_size,
        learning_rate=a.learning_rate,
        warmup_ratio=a.warmup_ratio,
        max_length=a.max_length,
        seed=a.seed,
        show_progress=not a.quiet,
    ).as_dict()


def _train_grader(a: argparse.Namespace) -> dict[str, Any]:
    from crag_integrations.training import train_grader

    return train_grader(
        a.data,
        a.base_model,
        a.output_dir,
        labels=a.labels,
        class_weights=_class_weights(a.class_weights),
        epochs=a.epochs,
        max_steps=a.max_steps,
        batch_size=a.batch_size,
        learning_rate=a.learning_rate,
        warmup_ratio=a.warmup_ratio,
        max_length=a.max_length,
        seed=a.seed,
        show_progress=not a.quiet,
    ).as_dict()


def _train_highlighter(a: argparse.Namespace) -> dict[str, Any]:
    from crag_integrations.training import train_highlighter

    return train_highlighter(
        a.data,
        a.base_model,
        a.output_dir,
        class_weights=_class_weights(a.class_weights),
        epochs=a.epochs,
        max_steps=a.max_steps,
        batch_size=a.batch_size,
        learning_rate=a.learning_rate,
        warmup_ratio=a.warmup_ratio,
        max_length=a.max_length,
        stride=a.stride,
        seed=a.seed,
        show_progress=not a.quiet,
    ).as_dict()


def _evaluate_reranker(a: argparse.Namespace) -> dict[str, Any]:
    from crag_integrations.evaluation import evaluate_ranking, load_trec_dl

    queries, qrels = load_trec_dl(a.data_dir, split=a.split)
    if a.first_stage:
        metrics = evaluate_ranking(
            {q.qid: list(q.doc_ids) for q in queries},
            qrels,
            k=a.k,
            relevance_threshold=a.relevance_threshold,
        )
    elif a.bi_encoder:
        from crag_integrations.training import evaluate_bi_encoder

        metrics = evaluate_bi_encoder(
            a.bi_encoder,
            queries,
            qrels,
            k=a.k,
            relevance_threshold=a.relevance_threshold,
            batch_size=a.batch_size,
            device=a.device,
            show_progress=not a.quiet,
        )
    else:
        from crag_integrations.evaluation.checkpoints import evaluate_reranker

        metrics = evaluate_reranker(
            a.model,
            queries,
            qrels,
            k=a.k,
            relevance_threshold=a.relevance_threshold,
            max_length=a.max_length,
            batch_size=a.batch_size,
            device=a.device,
            backend=a.backend,
            quantize=a.quantize,
            show_progress=not a.quiet,
        )
    return {"split": a.split, **metrics.as_dict()}


def _evaluate_grader(a: argparse.Namespace) -> dict[str, Any]:
    from crag_integrations.evaluation.checkpoints import evaluate_grader

    return evaluate_grader(
        a.model,
        a.data,
        positive_label=a.positive_label,
        max_length=a.max_length,
        batch_size=a.batch_size,
        device=a.device,
        backend=a.backend,
        quantize=a.quantize,
        show_progress=not a.quiet,
    ).as_dict()


def _evaluate_highlighter(a: argparse.Namespace) -> dict[str, Any]:
    from crag_integrations.evaluation.checkpoints import evaluate_highlighter

    return evaluate_highlighter(
        a.model,
        a.data,
        threshold=a.threshold,
        merge_gap_chars=a.merge_gap_chars,
        min_span_chars=a.min_span_chars,
        max_length=a.max_length,
        stride=a.stride,
        device=a.device,
        backend=a.backend,
        quantize=a.quantize,
        show_progress=not a.quiet,
    ).as_dict()


def _score(a: argparse.Namespace) -> dict[str, Any]:
    scorer = None
    if a.ray is not None:
        from crag_integrations.ray import RayRowScorer  # only when asked: Ray is an extra

        scorer = RayRowScorer.from_args(a)
    return score_from_args(a, scorer=scorer)


_COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "train-reranker": _train_reranker,
    "train-grader": _train_grader,
    "train-highlighter": _train_highlighter,
    "evaluate-reranker": _evaluate_reranker,
    "evaluate-grader": _evaluate_grader,
    "evaluate-highlighter": _evaluate_highlighter,
    "score": _score,
}


def _check_backend_arguments(parser: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse ``--backend`` / ``--quantize`` where they would change nothing or cannot run."""
    backend, quantize = getattr(a, "backend", "torch"), getattr(a, "quantize", None)
    if quantize is not None and backend != "onnx":
        parser.error(f"--quantize {quantize} needs --backend onnx")
    if (backend, quantize) != ("torch", None) and not getattr(a, "model", True):
        parser.error("--backend and --quantize choose how --model runs; give --model")
    if getattr(a, "model", None) and hasattr(a, "backend"):
        try:  # the engine's own checks (device and back-end), before any model work
            EngineConfig(
                model=a.model, device=a.device or "auto", backend=a.backend, quantize=a.quantize
            )
        except ValueError as exc:
            parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and print its result as JSON.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 2 when the model is missing or of the wrong kind, the
        data cannot be used (missing file, unknown type, missing column) or an optional
        dependency the command needs is not installed: the reason goes to standard error as
        one line, without a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_backend_arguments(parser, args)
    if getattr(args, "quiet", False):
        disable_progress_bars()
    try:
        result = _COMMANDS[args.command](args)
    except (
        ModelUnavailableError,
        IncompatibleModelError,
        DataError,
        FileNotFoundError,
        ImportError,  # an extra that is not installed (the message names it)
    ) as exc:
        print(f"crag-integrations {args.command}: error: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
