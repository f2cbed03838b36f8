"""What a training run did: :class:`TrainingSummary`, the return value of every trainer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainingSummary"]


@dataclass(frozen=True)
class TrainingSummary:
    """What a training run did.

    Attributes:
        task: ``"reranker"``, ``"grader"`` or ``"highlighter"``.
        output_dir: The saved checkpoint.
        base_model: The checkpoint training started from.
        num_examples: Training examples after preprocessing (pairs, lists or windows).
        num_steps: Optimiser steps taken.
        epochs: Epochs run.
        train_loss: Mean training loss reported by the trainer.
        seconds: Wall-clock training time.
        details: Task-specific facts (objective, pos_weight, label names, ...).
    """

    task: str
    output_dir: Path
    base_model: str
    num_examples: int
    num_steps: int
    epochs: float
    train_loss: float
    seconds: float
    details: Mapping[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        """A short human-readable summary."""
        extra = ", ".join(f"{k}={v}" for k, v in self.details.items())
        return (
            f"trained {self.task} from {self.base_model}: {self.num_examples} examples, "
            f"{self.num_steps} steps, {self.epochs:g} epochs, loss {self.train_loss:.4f}, "
            f"{self.seconds:.1f}s -> {self.output_dir}" + (f" ({extra})" if extra else "")
        )

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "task": self.task,
            "output_dir": str(self.output_dir),
            "base_model": self.base_model,
            "num_examples": self.num_examples,
            "num_steps": self.num_steps,
            "epochs": self.epochs,
            "train_loss": self.train_loss,
            "seconds": self.seconds,
            **{k: v for k, v in self.details.items() if _jsonable(v)},
        }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
