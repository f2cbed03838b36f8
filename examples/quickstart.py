"""Rerank, grade and highlight a handful of passages, and print what each stage decided.

Real models (hub ids or local directories; flags or environment variables):

    python examples/quickstart.py \
        --reranker cross-encoder/ms-marco-MiniLM-L6-v2 \
        --grader skshmjn/CRAG-ModernBert \
        --highlighter KRLabsOrg/acl-verbatim-modernbert

    CRAG_RERANKER=/models/reranker CRAG_GRADER=/models/grader \
    CRAG_HIGHLIGHTER=/models/highlighter python examples/quickstart.py

Offline demo (no downloads): ``--demo`` builds tiny, randomly initialised checkpoints in a
temporary directory and runs the same code on them. Their scores are meaningless; the
demo shows the mechanics (ranking, filtering, spans, windows), not quality.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from crag_integrations import (
    EvidenceHighlighter,
    ModelUnavailableError,
    RelevanceGrader,
    Reranker,
    RerankGradeTrimPipeline,
)

QUERY = "What causes rain?"
PASSAGES = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built it.",
    "Rain forms when water vapour in the atmosphere cools and condenses into droplets around "
    "tiny particles such as dust or salt. When the droplets grow heavy enough, they fall.",
    "Climate change is shifting rainfall patterns: warmer air holds more moisture, so heavy "
    "downpours become more frequent in many regions while others dry out.",
    "Photosynthesis converts light energy into chemical energy stored in glucose. It takes "
    "place in the chloroplasts of plant cells.",
    "Clouds are made of water droplets or ice crystals. Orographic rain occurs when moist air "
    "is forced up a mountain slope, cools, and releases its moisture as precipitation.",
    "",
]

DEFAULTS = {
    "reranker": "cross-encoder/ms-marco-MiniLM-L6-v2",
    "grader": "skshmjn/CRAG-ModernBert",
    "highlighter": "KRLabsOrg/acl-verbatim-modernbert",
}


def build_demo_models(directory: Path) -> dict[str, str]:
    """Tiny random checkpoints: a one-logit reranker, a binary grader and a token head."""
    import transformers

    from crag_integrations.testing import save_tiny_checkpoint

    transformers.utils.logging.disable_progress_bar()

    return {
        "reranker": str(save_tiny_checkpoint(directory / "reranker", num_labels=1, seed=1)),
        "grader": str(
            save_tiny_checkpoint(
                directory / "grader",
                architecture="modernbert",
                num_labels=2,
                id2label={0: "not_relevant", 1: "relevant"},
                seed=2,
            )
        ),
        "highlighter": str(
            save_tiny_checkpoint(directory / "highlighter", head="token", num_labels=2, seed=3)
        ),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for role in ("reranker", "grader", "highlighter"):
        env = f"CRAG_{role.upper()}"
        parser.add_argument(
            f"--{role}",
            default=os.environ.get(env, DEFAULTS[role]),
            help=f"hub id or local directory (env {env}; default {DEFAULTS[role]})",
        )
    parser.add_argument("--top-n", type=int, default=4, help="texts kept by the reranker")
    parser.add_argument("--threshold", type=float, default=0.5, help="grader threshold")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="use tiny random checkpoints built on the spot (no downloads; meaningless scores)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crag-demo-") as tmp:
        models = vars(args)
        if args.demo:
            models = {**models, **build_demo_models(Path(tmp))}
            print("DEMO MODE: tiny randomly initialised models; the scores below are")
            print("meaningless. Pass real models with --reranker/--grader/--highlighter.\n")
        pipeline = RerankGradeTrimPipeline(
            reranker=Reranker(model=models["reranker"], top_n=args.top_n),
            grader=RelevanceGrader(model=models["grader"], threshold=args.threshold),
            highlighter=EvidenceHighlighter(model=models["highlighter"], min_span_chars=10),
            on_no_evidence="keep",
        )
        started = time.perf_counter()
        try:
            result = pipeline.run(QUERY, PASSAGES)
        except ModelUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            print(
                "\nTo try the package without any download, run: "
                "python examples/quickstart.py --demo",
                file=sys.stderr,
            )
            return 2
        elapsed = time.perf_counter() - started

    print(f"Query: {QUERY}\n")
    print(f"Kept {len(result.kept)} of {len(PASSAGES)} passages ({elapsed:.2f} s):")
    for rank, item in enumerate(result.kept, start=1):
        assert item.ranked is not None and item.grade is not None
        print(
            f"  #{rank} passage {item.index}: rerank logit {item.ranked.score:+.3f} "
            f"(p={item.ranked.probability:.3f}), grade {item.grade.label} "
            f"(p_relevant={item.grade.probability:.3f})"
        )
        spans = item.highlight.spans if item.highlight else ()
        shown = item.output_text if item.output_text else "(empty passage)"
        print(f"      evidence spans: {[(s.start, s.end) for s in spans] or 'none, kept whole'}")
        print(f"      -> {shown[:160]}{'...' if len(shown) > 160 else ''}")
    print("\nDropped:")
    for dropped in result.dropped:
        print(f"  passage {dropped.index}: {dropped.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
