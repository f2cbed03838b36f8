"""Leaf value types shared by every layer: engine outputs and role results.

Everything here is a frozen dataclass of plain Python values (no tensors), so results can be
logged, compared, pickled and written into framework metadata without surprises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DropReason",
    "DroppedText",
    "Grade",
    "HeadKind",
    "Highlight",
    "ModelHead",
    "PipelineResult",
    "ProcessedText",
    "RankedText",
    "SequenceScores",
    "Span",
    "TokenScores",
]

HeadKind = Literal["sequence", "token"]


@dataclass(frozen=True, slots=True)
class ModelHead:
    """What a checkpoint's head outputs, read from its ``config.json``.

    Attributes:
        kind: ``"sequence"`` for ``*ForSequenceClassification`` checkpoints (one vector of
            logits per pair), ``"token"`` for ``*ForTokenClassification`` (one per token).
        id2label: Label names in index order; its length is the number of labels.
    """

    kind: HeadKind
    id2label: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        """Number of logits the head produces per pair (or per token)."""
        return len(self.id2label)


@dataclass(frozen=True, slots=True)
class SequenceScores:
    """Raw logits of a sequence-classification head for one (query, text) pair.

    Attributes:
        window_logits: One logit vector per window. A pair that fits in ``max_length``
            has exactly one window; longer texts are split into overlapping windows, each
            repeating the query, and every window is scored (nothing is truncated).
    """

    window_logits: tuple[tuple[float, ...], ...]

    @property
    def num_windows(self) -> int:
        """How many windows the text was split into (1 when it fit)."""
        return len(self.window_logits)


@dataclass(frozen=True, slots=True)
class TokenScores:
    """Per-token label probabilities of a token-classification head over one text.

    Only the text's own tokens are listed (the query and special tokens are not). Tokens
    seen by several overlapping windows carry the mean of their windows' probabilities.

    Attributes:
        offsets: ``(start, end)`` character offsets of each token in the original text.
        probabilities: One probability vector (softmax over labels) per token.
        num_windows: How many windows the text was split into.
    """

    offsets: tuple[tuple[int, int], ...]
    probabilities: tuple[tuple[float, ...], ...]
    num_windows: int


@dataclass(frozen=True, slots=True)
class RankedText:
    """One text scored by a reranker.

    Attributes:
        index: Position of the text in the caller's list.
        text: The text itself (the caller's string, unchanged).
        score: The raw relevance logit (max over windows for long texts).
        probability: ``sigmoid(score)``, a relevance probability in ``[0, 1]``.
        num_windows: Windows used to score the text.
    """

    index: int
    text: str
    score: float
    probability: float
    num_windows: int


@dataclass(frozen=True, slots=True)
class Grade:
    """A relevance grader's verdict on one text.

    Attributes:
        index: Position of the text in the caller's list.
        text: The text itself.
        label: The most probable label name (for one-logit models ``"relevant"`` or
            ``"not_relevant"`` by threshold).
        probability: Probability that the text is relevant (the summed probability of
            every label mapped to relevant).
        relevant: ``probability >= threshold``.
        distribution: Probability of each label name.
        num_windows: Windows used; for long texts the window with the highest relevance
            probability decides.
    """

    index: int
    text: str
    label: str
    probability: float
    relevant: bool
    distribution: Mapping[str, float]
    num_windows: int


@dataclass(frozen=True, slots=True)
class Span:
    """A character span of a text with a score; ``text == source[start:end]``."""

    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class Highlight:
    """The evidence a highlighter found in one text.

    Attributes:
        index: Position of the text in the caller's list.
        text: The original text.
        spans: Evidence spans in text order, after merging and the minimum-length filter.
        trimmed_text: The spans' texts joined by the highlighter's separator (empty when
            there is no evidence).
        sentences: Per-sentence mean evidence probability, when asked for, else ``None``.
        num_windows: Windows used to read the text.
    """

    index: int
    text: str
    spans: tuple[Span, ...]
    trimmed_text: str
    sentences: tuple[Span, ...] | None
    num_windows: int


DropReason = Literal["below_top_n", "below_score_threshold", "not_relevant", "no_evidence"]


@dataclass(frozen=True, slots=True)
class ProcessedText:
    """One text that survived the pipeline, with what each stage said about it.

    Attributes:
        index: Position in the caller's list.
        text: The caller's original text.
        output_text: What to hand to the LLM: the trimmed evidence when a highlighter ran
            and found some, else the original text.
        ranked: The reranker's result, if a reranker ran.
        grade: The grader's result, if a grader ran.
        highlight: The highlighter's result, if a highlighter ran.
    """

    index: int
    text: str
    output_text: str
    ranked: RankedText | None = None
    grade: Grade | None = None
    highlight: Highlight | None = None


@dataclass(frozen=True, slots=True)
class DroppedText:
    """A text the pipeline dropped, and the configured rule that dropped it."""

    index: int
    text: str
    reason: DropReason
    ranked: RankedText | None = None
    grade: Grade | None = None
    highlight: Highlight | None = None


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """Everything the pipeline decided for one query.

    Attributes:
        kept: Surviving texts in final order (rerank order when a reranker ran, else input
            order).
        dropped: Every other input text with the reason it was dropped, so nothing
            disappears silently. ``len(kept) + len(dropped)`` equals the input length.
    """

    kept: tuple[ProcessedText, ...]
    dropped: tuple[DroppedText, ...] = field(default=())
