"""Fine-tune a one-logit cross-encoder reranker with sentence-transformers' ``CrossEncoderTrainer``.

``objective="bce"``: binary cross-entropy with ``pos_weight`` (negatives per positive) on
labelled pairs, or on (query, positive) pairs with negatives mined by a bi-encoder.
``objective="distill"``: listwise distillation (ListNet) from a bi-encoder's cosine scores over
candidate lists, optionally boosted by known positive labels.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Literal

from crag_integrations.training._trainer import bf16_default, planned_steps, warmup_arguments
from crag_integrations.training.data import (
    DataSource,
    candidate_lists,
    labelled_pairs,
    load_rows,
    mine_negatives,
)
from crag_integrations.training.summary import TrainingSummary

__all__ = ["train_reranker"]


def train_reranker(
    data: DataSource,
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    objective: Literal["bce", "distill"] = "bce",
    query_column: str = "query",
    document_column: str = "document",
    positive_column: str = "positive",
    label_column: str = "label",
    documents_column: str = "documents",
    scores_column: str = "scores",
    labels_column: str = "labels",
    hard_negatives: int = 0,
    bi_encoder: str | os.PathLike[str] | None = None,
    pos_weight: float | None = None,
    teacher_scale: float = 20.0,
    label_boost: float = 0.0,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 32,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_length: int = 256,
    bf16: bool | None = None,
    seed: int = 12,
    show_progress: bool = True,
) -> TrainingSummary:
    """Fine-tune a one-logit cross-encoder reranker.

    Data layouts (column names configurable):

    * labelled pairs ``{query, document, label}`` (label 1/0) for ``objective="bce"``;
    * (query, positive) pairs ``{query, positive}`` for ``objective="bce"`` with
      ``hard_negatives > 0``: ``mine_hard_negatives`` retrieves that many negatives per
      positive with the ``bi_encoder`` over all positives in the data (labelled pairs with
      label 1 are mined for too, adding to their own negatives);
    * candidate lists ``{query, documents[, scores][, labels]}`` for ``objective="distill"``:
      the target of each list is ``softmax(teacher_scale * scores + label_boost * labels)``,
      trained with ListNet. Missing ``scores`` are the ``bi_encoder``'s cosine similarities.
      Labels only add to the teacher, so an unjudged candidate (label 0) is left to the teacher
      rather than pushed down as a negative.

    Args:
        data: Training rows (see :func:`load_rows`).
        base_model: Starting checkpoint (a cross-encoder or any encoder; a new one-logit head is
            added when it has none).
        output_dir: Where the checkpoint is saved.
        objective: ``"bce"`` or ``"distill"``.
        query_column: Query text column.
        document_column: Document column of labelled pairs.
        positive_column: Positive-document column of (query, positive) pairs.
        label_column: 0/1 label column of labelled pairs.
        documents_column: Candidate-list column for distillation.
        scores_column: Teacher scores column (one float per candidate) for distillation.
        labels_column: Known labels per candidate for distillation (optional).
        hard_negatives: Negatives to mine per positive with ``bi_encoder`` (``bce`` only).
        bi_encoder: A sentence-transformers bi-encoder for mining or teacher scores.
        pos_weight: BCE weight of positives; defaults to negatives per positive in the data.
        teacher_scale: Multiplier of the teacher's cosine scores (inverse temperature).
        label_boost: Added to the scaled teacher score of candidates labelled relevant.
        epochs: Training epochs.
        max_steps: Stop after this many steps (``-1``: run all epochs).
        batch_size: Pairs (``bce``) or candidate lists (``distill``) per step.
        learning_rate: Peak learning rate.
        warmup_ratio: Share of steps spent warming up.
        weight_decay: AdamW weight decay.
        max_length: Token budget of a (query, document) pair.
        bf16: Mixed precision; defaults to on when a bf16-capable GPU is present.
        seed: Random seed.
        show_progress: Show progress bars.

    Returns:
        The training summary.

    Raises:
        ValueError: If the data does not fit the objective.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, ListNetLoss

    start = time.perf_counter()
    rows = load_rows(data)
    out = Path(output_dir)
    random.seed(seed)
    teacher = SentenceTransformer(str(bi_encoder)) if bi_encoder is not None else None
    details: dict[str, Any] = {"objective": objective}

    if objective == "bce":
        pairs = labelled_pairs(
            rows,
            query_column=query_column,
            document_column=document_column,
            positive_column=positive_column,
            label_column=label_column,
        )
        if hard_negatives > 0:
            if teacher is None:
                raise ValueError("hard_negatives needs a bi_encoder to mine with")
            pairs += mine_negatives(pairs, teacher, hard_negatives, show_progress)
        n_pos = sum(1 for p in pairs if p["label"] >= 0.5)
        n_neg = len(pairs) - n_pos
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                f"BCE needs positives and negatives; got {n_pos} positives and {n_neg} negatives "
                "(give labelled pairs, or set hard_negatives with a bi_encoder)"
            )
        weight = pos_weight if pos_weight is not None else n_neg / n_pos
        details.update(positives=n_pos, negatives=n_neg, pos_weight=round(weight, 4))
        random.shuffle(pairs)
        train_dataset = Dataset.from_dict(
            {
                "query": [p["query"] for p in pairs],
                "document": [p["document"] for p in pairs],
                "label": [float(p["label"]) for p in pairs],
            }
        )
        num_examples = len(pairs)
    elif objective == "distill":
        lists = candidate_lists(
            rows,
            teacher,
            query_column=query_column,
            documents_column=documents_column,
            scores_column=scores_column,
            labels_column=labels_column,
            document_column=document_column,
            label_column=label_column,
            show_progress=show_progress,
        )
        targets = [
            [
                teacher_scale * s + label_boost * lab
                for s, lab in zip(item["scores"], item["labels"], strict=True)
            ]
            for item in lists
        ]
        details.update(
            lists=len(lists),
            candidates=sum(len(item["documents"]) for item in lists),
            teacher_scale=teacher_scale,
            label_boost=label_boost,
        )
        train_dataset = Dataset.from_dict(
            {
                "query": [item["query"] for item in lists],
                "documents": [item["documents"] for item in lists],
                "labels": targets,
            }
        )
        num_examples = len(lists)
    else:
        raise ValueError(f"unknown objective {objective!r}; use 'bce' or 'distill'")

    model = CrossEncoder(str(base_model), num_labels=1, max_length=max_length)
    if objective == "bce":
        loss: torch.nn.Module = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(weight))
    else:
        loss = ListNetLoss(model, mini_batch_size=256)
    use_bf16 = bf16_default(bf16)
    args = CrossEncoderTrainingArguments(
        **warmup_arguments(CrossEncoderTrainingArguments, warmup_ratio),
        output_dir=str(out),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        bf16=use_bf16,
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=max(1, planned_steps(num_examples, batch_size, epochs, max_steps) // 20),
        report_to="none",
        disable_tqdm=not show_progress,
        dataloader_drop_last=False,
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
    result = trainer.train()
    model.save_pretrained(str(out))
    summary = TrainingSummary(
        task="reranker",
        output_dir=out,
        base_model=str(base_model),
        num_examples=num_examples,
        num_steps=int(result.global_step),
        epochs=float(result.metrics.get("epoch", epochs)),
        train_loss=float(result.training_loss),
        seconds=time.perf_counter() - start,
        details={**details, "bf16": use_bf16, "max_length": max_length},
    )
    if show_progress:
        print(summary.format(), file=sys.stderr)
    return summary
