"""Plumbing the trainers share: class weights, the weighted Hugging Face ``Trainer`` run, bf16.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from crag_integrations.training.summary import TrainingSummary

__all__ = [
    "ListDataset",
    "bf16_default",
    "planned_steps",
    "resolve_class_weights",
    "run_trainer",
    "warmup_arguments",
]


def resolve_class_weights(
    spec: Sequence[float] | Literal["balanced"] | None, targets: Sequence[int], num_labels: int
) -> list[float] | None:
    """Cross-entropy weight per label id: given, ``"balanced"`` (``n / (labels * count)``), or none.

    Raises:
        ValueError: The number of given weights is not the number of labels.
    """
    if spec is None:
        return None
    if spec == "balanced":
        counts = Counter(targets)
        return [
            len(targets) / (num_labels * counts[i]) if counts[i] else 0.0 for i in range(num_labels)
        ]
    weights = [float(w) for w in spec]
    if len(weights) != num_labels:
        raise ValueError(f"got {len(weights)} class weights for {num_labels} labels")
    return weights


def run_trainer(
    *,
    task: str,
    model: Any,
    tokenizer: Any,
    features: list[dict[str, Any]],
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    class_weights: Sequence[float] | None,
    token_level: bool,
    epochs: float,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_ratio: float,
    weight_decay: float,
    bf16: bool | None,
    seed: int,
    show_progress: bool,
    start: float,
    details: Mapping[str, Any],
) -> TrainingSummary:
    """Train ``model`` on pre-tokenised ``features`` with a class-weighted ``Trainer``; save it.

    The checkpoint (model and tokenizer) is saved to ``output_dir`` with no intermediate
    checkpoints; ``token_level`` picks token-classification padding of the labels.
    """
    import torch
    from transformers import (
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    weight_tensor = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    class _WeightedTrainer(Trainer):
        """A ``Trainer`` whose cross-entropy weighs the classes."""

        def compute_loss(  # type: ignore[no-untyped-def]
            self, model, inputs, return_outputs=False, num_items_in_batch=None
        ):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits
            loss_fn = torch.nn.CrossEntropyLoss(
                weight=weight_tensor.to(logits.device) if weight_tensor is not None else None,
                ignore_index=-100,
            )
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
            return (loss, outputs) if return_outputs else loss

    out = Path(output_dir)
    use_bf16 = bf16_default(bf16)
    args = TrainingArguments(
        **warmup_arguments(TrainingArguments, warmup_ratio),
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
        logging_steps=max(1, planned_steps(len(features), batch_size, epochs, max_steps) // 20),
        report_to="none",
        disable_tqdm=not show_progress,
    )
    collator = (
        DataCollatorForTokenClassification(tokenizer)
        if token_level
        else DataCollatorWithPadding(tokenizer)
    )
    trainer = _WeightedTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(features),
        data_collator=collator,
        processing_class=tokenizer,
    )
    result = trainer.train()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    summary = TrainingSummary(
        task=task,
        output_dir=out,
        base_model=str(base_model),
        num_examples=len(features),
        num_steps=int(result.global_step),
        epochs=float(result.metrics.get("epoch", epochs)),
        train_loss=float(result.training_loss),
        seconds=time.perf_counter() - start,
        details={**details, "bf16": use_bf16},
    )
    if show_progress:
        print(summary.format(), file=sys.stderr)
    return summary


class ListDataset:
    """A map-style dataset over pre-tokenised features (no ``datasets`` dependency)."""

    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


def bf16_default(bf16: bool | None) -> bool:
    """``bf16`` if given, else whether a bf16-capable CUDA device is present."""
    if bf16 is not None:
        return bf16
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def warmup_arguments(arguments_class: Any, ratio: float) -> dict[str, Any]:
    """Warm-up as a ratio: ``warmup_ratio`` in transformers 4, a float ``warmup_steps`` in 5."""
    import inspect

    if "warmup_ratio" in inspect.signature(arguments_class.__init__).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def planned_steps(n: int, batch_size: int, epochs: float, max_steps: int) -> int:
    """Optimiser steps a run will take (to space out the loss logging)."""
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(n / batch_size) * math.ceil(epochs))
