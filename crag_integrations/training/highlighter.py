"""Fine-tune a token classifier that marks evidence in a context (labels ``O``/``EVIDENCE``).

Labels come from (query, context, evidence character spans), aligned through the fast
tokenizer's offsets. Long contexts are split by
:func:`crag_integrations.engine.windows.encode_windows`, the windowing inference uses, so the
model is trained on the windows it will later read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Literal

from crag_integrations.engine.windows import encode_windows
from crag_integrations.training._trainer import resolve_class_weights, run_trainer
from crag_integrations.training.data import DataSource, load_rows, parse_span, require_columns
from crag_integrations.training.summary import TrainingSummary

__all__ = ["train_highlighter"]

Span = tuple[int, int]


def train_highlighter(
    data: DataSource,
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    query_column: str = "query",
    context_column: str = "context",
    spans_column: str = "spans",
    class_weights: Sequence[float] | Literal["balanced"] | None = None,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_length: int = 512,
    stride: int = 128,
    bf16: bool | None = None,
    seed: int = 12,
    show_progress: bool = True,
) -> TrainingSummary:
    """Fine-tune a token classifier that marks evidence in a context (labels ``O``/``EVIDENCE``).

    Each context token is labelled ``EVIDENCE`` when its character offsets overlap a gold span;
    query and special tokens are ignored (-100). Contexts longer than ``max_length`` are split
    into windows overlapping by ``stride`` tokens, the way inference windows them. Rows with no
    spans are irrelevant rows: all their tokens are ``O``.

    Args:
        data: Rows with query, context and spans columns; spans are ``[start, end]`` character
            offsets into the context (see :func:`load_rows`).
        base_model: Starting checkpoint (needs a fast tokenizer).
        output_dir: Where the checkpoint is saved.
        query_column: Query text column.
        context_column: Context text column.
        spans_column: Evidence spans column.
        class_weights: Cross-entropy weight of ``O`` and ``EVIDENCE``, or ``"balanced"``.
        epochs: Training epochs.
        max_steps: Stop after this many steps (``-1``: run all epochs).
        batch_size: Windows per step.
        learning_rate: Peak learning rate.
        warmup_ratio: Share of steps spent warming up.
        weight_decay: AdamW weight decay.
        max_length: Tokens per window.
        stride: Overlapping tokens between consecutive windows.
        bf16: Mixed precision; defaults to on when a bf16-capable GPU is present.
        seed: Random seed.
        show_progress: Show progress bars.

    Returns:
        The training summary.

    Raises:
        ValueError: If the tokenizer is not a fast tokenizer or a span is out of range.
    """
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    start = time.perf_counter()
    rows = load_rows(data)
    require_columns(rows, (query_column, context_column, spans_column), "highlighter training")
    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    if not tokenizer.is_fast:
        raise ValueError("highlighter training needs a fast tokenizer (for character offsets)")
    examples = []
    for row in rows:
        context = str(row[context_column])
        spans = [parse_span(s, len(context)) for s in row[spans_column] or []]
        examples.append((str(row[query_column]), context, spans))
    features = [
        window
        for row_windows in _labelled_windows(tokenizer, examples, max_length, stride)
        for window in row_windows
    ]
    targets = [lab for f in features for lab in f["labels"] if lab >= 0]
    weights = resolve_class_weights(class_weights, targets, 2)
    model = AutoModelForTokenClassification.from_pretrained(
        str(base_model),
        num_labels=2,
        id2label={0: "O", 1: "EVIDENCE"},
        label2id={"O": 0, "EVIDENCE": 1},
        ignore_mismatched_sizes=True,
    )
    return run_trainer(
        task="highlighter",
        model=model,
        tokenizer=tokenizer,
        features=features,
        base_model=base_model,
        output_dir=output_dir,
        class_weights=weights,
        token_level=True,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        bf16=bf16,
        seed=seed,
        show_progress=show_progress,
        start=start,
        details={
            "rows": len(rows),
            "evidence_tokens": sum(targets),
            "tokens": len(targets),
            "max_length": max_length,
            "stride": stride,
        },
    )


def _token_windows(
    tokenizer: Any,
    query: str,
    context: str,
    spans: Sequence[Span],
    max_length: int,
    stride: int,
) -> list[dict[str, Any]]:
    """The labelled training windows of one row (see :func:`_labelled_windows`)."""
    return _labelled_windows(tokenizer, [(query, context, spans)], max_length, stride)[0]


def _labelled_windows(
    tokenizer: Any,
    examples: Sequence[tuple[str, str, Sequence[Span]]],
    max_length: int,
    stride: int,
) -> list[list[dict[str, Any]]]:
    """Each ``(query, context, evidence spans)`` row as labelled token-classification windows.

    The windows are :func:`~crag_integrations.engine.windows.encode_windows`'s, the ones the
    engine reads at inference (the stride clamped so that a long query cannot stall them).
    A context token is ``1`` when its characters overlap an evidence span, else ``0``; query
    and special tokens are ``-100`` (ignored by the loss).

    Raises:
        ValueError: A row's query leaves no room for context within ``max_length``.
    """
    encoded = encode_windows(
        tokenizer,
        [(query, context) for query, context, _ in examples],
        max_length=max_length,
        stride=stride,
        with_offsets=True,
        with_token_type_ids="token_type_ids" in tokenizer.model_input_names,
    )
    labelled: list[list[dict[str, Any]]] = []
    for index, ((_, _, spans), windows) in enumerate(zip(examples, encoded, strict=True)):
        if isinstance(windows, ValueError):
            raise ValueError(f"highlighter row {index}: {windows}") from windows
        row_windows = []
        for window in windows:
            # with_offsets=True above, so every window carries both
            assert window.sequence_ids is not None
            assert window.offsets is not None
            labels = [
                int(any(start < e and s < end for s, e in spans))
                if seq_id == 1 and end > start
                else -100
                for seq_id, (start, end) in zip(window.sequence_ids, window.offsets, strict=True)
            ]
            feature: dict[str, Any] = {
                "input_ids": window.input_ids,
                "attention_mask": [1] * len(window.input_ids),
                "labels": labels,
            }
            if window.token_type_ids is not None:
                feature["token_type_ids"] = window.token_type_ids
            row_windows.append(feature)
        labelled.append(row_windows)
    return labelled
