"""Fine-tune a sequence classifier that grades (query, document) pairs into N labels.

A Hugging Face ``Trainer`` with optional class weights; the label names become the
checkpoint's ``id2label``, which :class:`~crag_integrations.RelevanceGrader` reads.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from crag_integrations.training._trainer import resolve_class_weights, run_trainer
from crag_integrations.training.data import (
    DataSource,
    label_id,
    label_names,
    load_rows,
    require_columns,
)
from crag_integrations.training.summary import TrainingSummary

__all__ = ["train_grader"]


def train_grader(
    data: DataSource,
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    query_column: str = "query",
    document_column: str = "document",
    label_column: str = "label",
    labels: Sequence[str | int] | None = None,
    class_weights: Sequence[float] | Literal["balanced"] | None = None,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 32,
    learning_rate: float = 3e-5,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_length: int = 256,
    bf16: bool | None = None,
    seed: int = 12,
    show_progress: bool = True,
) -> TrainingSummary:
    """Fine-tune a sequence classifier that grades (query, document) pairs into N labels.

    Args:
        data: Rows with query, document and label columns (see :func:`load_rows`).
        base_model: Starting checkpoint.
        output_dir: Where the checkpoint is saved.
        query_column: Query text column.
        document_column: Document text column.
        label_column: Label column (ints or names).
        labels: The label names in id order; defaults to the sorted labels in the data. They
            become the checkpoint's ``id2label``.
        class_weights: Cross-entropy weight per label id, or ``"balanced"``
            (``n / (num_labels * count)``, as scikit-learn).
        epochs: Training epochs.
        max_steps: Stop after this many steps (``-1``: run all epochs).
        batch_size: Pairs per step.
        learning_rate: Peak learning rate.
        warmup_ratio: Share of steps spent warming up.
        weight_decay: AdamW weight decay.
        max_length: Token budget of a pair.
        bf16: Mixed precision; defaults to on when a bf16-capable GPU is present.
        seed: Random seed.
        show_progress: Show progress bars.

    Returns:
        The training summary.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start = time.perf_counter()
    rows = load_rows(data)
    require_columns(rows, (query_column, document_column, label_column), "grader training")
    names = [str(x) for x in labels] if labels is not None else label_names(rows, label_column)
    label2id = {name: i for i, name in enumerate(names)}
    targets = [label_id(r[label_column], label2id, names) for r in rows]
    weights = resolve_class_weights(class_weights, targets, len(names))
    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    encoded = tokenizer(
        [str(r[query_column]) for r in rows],
        [str(r[document_column]) for r in rows],
        truncation=True,
        max_length=max_length,
    )
    features = [
        {**{k: encoded[k][i] for k in encoded}, "labels": targets[i]} for i in range(len(rows))
    ]
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_model),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id=label2id,
        ignore_mismatched_sizes=True,
    )
    summary = run_trainer(
        task="grader",
        model=model,
        tokenizer=tokenizer,
        features=features,
        base_model=base_model,
        output_dir=output_dir,
        class_weights=weights,
        token_level=False,
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
            "labels": names,
            "label_counts": dict(Counter(names[t] for t in targets)),
            "class_weights": [round(w, 4) for w in weights] if weights else None,
            "max_length": max_length,
        },
    )
    return summary
