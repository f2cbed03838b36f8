"""Leaf value types shared by every layer: engine outputs and role results.

Everything here is a frozen dataclass of plain Python values (no tensors), so results can be
logged, compared, pickled and written into framework metadata without surprises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CragAction",
    "CragEvaluation",
    "DocumentEvaluation",
    "DropReason",
    "DroppedText",
    "Grade",
    "HeadKind",
    "Highlight",
    "ModelHead",
    "NoEvidencePolicy",
    "PipelineResult",
    "ProcessedText",
    "RankedText",
    "RefinedDocument",
    "ScoreScale",
    "SequenceScores",
    "Span",
    "TokenScores",
]

HeadKind = Literal["sequence", "token"]

#: The CRAG retrieval evaluator's verdict, for a query or for one document's own band.
CragAction = Literal["correct", "ambiguous", "incorrect"]

#: The scale CRAG scores and thresholds are on: relevance probabilities or raw logits.
ScoreScale = Literal["probability", "logit"]

#: What a trimming stage does with a text in which it found no evidence.
NoEvidencePolicy = Literal["keep", "drop"]


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

    Only the text's own tokens are listed (the query and special tokens are not). A text
    longer than one window is read in overlapping windows; each window's own
    probabilities are kept as its forward pass gave them (``window_probabilities``), and
    ``probabilities`` pools them into one sequence by the mean over the windows that read
    each token.

    Attributes:
        offsets: ``(start, end)`` character offsets of each token of the text, in text
            order, each token once (also the tokens several windows read).
        probabilities: One probability vector (softmax over labels) per token of
            ``offsets``: the mean over the windows that read it.
        num_windows: How many windows the text was split into.
        window_ranges: Per window, in text order: the ``(first, stop)`` slice of
            ``offsets`` holding the tokens that window read (consecutive tokens).
        window_probabilities: Per window: one probability vector per token of its slice,
            exactly as that window's forward pass produced it.
    """

    offsets: tuple[tuple[int, int], ...]
    probabilities: tuple[tuple[float, ...], ...]
    num_windows: int
    window_ranges: tuple[tuple[int, int], ...]
    window_probabilities: tuple[tuple[tuple[float, ...], ...], ...]


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
        sentences: Per-sentence mean character evidence score (see
            :func:`crag_integrations.scoring.window_sentence_scores`), when asked for, else
            ``None``.
        num_windows: Windows used to read the text.
    """

    index: int
    text: str
    spans: tuple[Span, ...]
    trimmed_text: str
    sentences: tuple[Span, ...] | None
    num_windows: int


@dataclass(frozen=True, slots=True)
class DocumentEvaluation:
    """The CRAG retrieval evaluator's judgement of one document.

    Attributes:
        score: The document's relevance score on the evaluator's scale.
        action: The document's own band: ``"correct"`` (score >= upper), ``"incorrect"``
            (score < lower), else ``"ambiguous"``.
    """

    score: float
    action: CragAction


@dataclass(frozen=True, slots=True)
class RefinedDocument:
    """One document after CRAG knowledge refinement.

    Attributes:
        index: Position of the document in the caller's list.
        text: The original text.
        refined_text: Kept strips joined by the separator, in original order ("" if none).
        strips: The kept strips with their scores and offsets into ``text``.
        num_strips: How many strips the document was split into.
    """

    index: int
    text: str
    refined_text: str
    strips: tuple[Span, ...]
    num_strips: int


@dataclass(frozen=True, slots=True)
class CragEvaluation:
    """The CRAG retrieval evaluator's verdict for one query.

    Attributes:
        action: ``"correct"``, ``"ambiguous"`` or ``"incorrect"``.
        scores: Each document's relevance score, in input order.
        document_actions: Each document's own band (``correct`` >= upper, ``incorrect``
            < lower, else ``ambiguous``), in input order.
        upper: The upper threshold used.
        lower: The lower threshold used.
        scale: ``"probability"`` or ``"logit"``.
    """

    action: CragAction
    scores: tuple[float, ...]
    document_actions: tuple[CragAction, ...]
    upper: float
    lower: float
    scale: ScoreScale


#: Why a text was dropped: the reranker's cut (``below_top_n``) or threshold
#: (``below_score_threshold``), the grader (``not_relevant``), a trimming stage that found
#: nothing (``no_evidence``), or the CRAG evaluator's own band (``incorrect``).
DropReason = Literal[
    "below_top_n", "below_score_threshold", "not_relevant", "no_evidence", "incorrect"
]


@dataclass(frozen=True, slots=True)
class ProcessedText:
    """One text that survived the pipeline, with what each stage said about it.

    Attributes:
        index: Position in the caller's list.
        text: The caller's original text.
        output_text: What to hand to the LLM: the trimmed evidence (or refined strips)
            when a trimming stage ran and found some, else the original text.
        ranked: The reranker's result, if a reranker ran.
        grade: The grader's result, if a grader ran.
        highlight: The highlighter's result, if a highlighter ran.
        evaluation: The CRAG evaluator's judgement, if the evaluator ran.
        refined: The knowledge refiner's result, if the refiner ran.
    """

    index: int
    text: str
    output_text: str
    ranked: RankedText | None = None
    grade: Grade | None = None
    highlight: Highlight | None = None
    evaluation: DocumentEvaluation | None = None
    refined: RefinedDocument | None = None


@dataclass(frozen=True, slots=True)
class DroppedText:
    """A text a stage dropped, the configured rule that dropped it, and what each stage
    that saw it said (the same fields as :class:`ProcessedText`)."""

    index: int
    text: str
    reason: DropReason
    ranked: RankedText | None = None
    grade: Grade | None = None
    highlight: Highlight | None = None
    evaluation: DocumentEvaluation | None = None
    refined: RefinedDocument | None = None


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """Everything one stage decided for one query: the pipeline's, the CRAG evaluator's
    and the knowledge refiner's common result, which the adapters translate.

    Attributes:
        kept: Surviving texts in final order (rerank order when a reranker ran, else input
            order).
        dropped: Every other input text with the reason it was dropped, in input order, so
            nothing disappears silently. ``len(kept) + len(dropped)`` equals the input
            length.
        action: The query's CRAG action when the stage decides one (the evaluator always;
            the pipeline when given action thresholds), else ``None``. Set even when
            nothing is kept.
        evaluation: The CRAG evaluator's whole verdict (scores and bands of every input
            text, thresholds, scale) when the evaluator produced this result, else ``None``.
    """

    kept: tuple[ProcessedText, ...]
    dropped: tuple[DroppedText, ...] = field(default=())
    action: CragAction | None = None
    evaluation: CragEvaluation | None = None
