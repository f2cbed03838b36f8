"""The units of work on a model's queue: a caller's request and the windows it is read in."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Pair", "Request", "Task", "Window"]

Pair = tuple[str, str]
#: What a request asks of the model: sequence logits or per-token probabilities.
Task = Literal["sequence", "token"]


@dataclass
class Request:
    """One call's unique pairs, how to window and batch them, and the future of its results."""

    task: Task
    pairs: list[Pair]
    max_length: int | None
    stride: int
    token_budget: int
    max_wait_s: float = 0.0
    max_queue: int = 1024
    #: Resolves to one outcome per pair: its result, or the exception that pair failed with.
    future: Future[Any] = field(default_factory=Future)

    @property
    def estimated_tokens(self) -> int:
        """A cheap upper-ish guess of the request's tokens (about 4 characters a token)."""
        return sum(len(q) + len(t) for q, t in self.pairs) // 4 + 3 * len(self.pairs)


@dataclass
class Window:
    """One window of one pair of one request in a drain, and the model's output for it."""

    request: int
    pair: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    #: For token tasks: positions (in input_ids) and character offsets of the text's tokens.
    text_positions: list[int] | None = None
    text_offsets: list[tuple[int, int]] | None = None
    output: Any = None
