"""The three model roles on the shared engine: reranker, relevance grader, span highlighter.

A role is a frozen configuration plus one verb (and its ``a``-prefixed async twin).
Constructing a role never loads a model: the shared engine loads on the first call, and
every role naming the same model (and device, dtype, revision) shares the loaded weights.
Input checks are those of :mod:`crag_integrations.inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from crag_integrations.config import EngineConfig, as_engine_config
from crag_integrations.engine import CrossEncoderEngine, get_engine
from crag_integrations.errors import IncompatibleModelError
from crag_integrations.inputs import (
    check_count,
    check_labels,
    check_number,
    check_query,
    check_texts,
)
from crag_integrations.scoring import (
    WindowPooling,
    best_window,
    evidence_label_mask,
    evidence_windows,
    extract_window_spans,
    join_spans,
    relevance_probability,
    relevant_label_mask,
    select_top,
    sigmoid,
    softmax,
    window_sentence_scores,
)
from crag_integrations.types import Grade, Highlight, RankedText, SequenceScores, TokenScores

__all__ = ["EvidenceHighlighter", "RelevanceGrader", "Reranker"]


def require_one_logit(engine: CrossEncoderEngine, *, needed_by: str, instead: str) -> None:
    """Refuse a model that is not a one-logit reranker before any score is misread.

    Args:
        engine: The engine whose head is checked (loads the model on first use).
        needed_by: Who needs the single relevance logit (for the message).
        instead: What to use for other heads (for the message).

    Raises:
        IncompatibleModelError: The head is a token head or has more than one label.
    """
    head = engine.head
    if head.kind != "sequence" or head.num_labels != 1:
        raise IncompatibleModelError(
            f"{engine.config.model!r} has a {head.kind}-classification head with "
            f"{head.num_labels} labels; {needed_by} needs a one-logit cross-encoder "
            f"(sequence classification). {instead}"
        )


class _Role:
    """Shared plumbing: the engine behind a role's ``model`` field."""

    model: str | EngineConfig

    @property
    def engine_config(self) -> EngineConfig:
        """The :class:`EngineConfig` this role runs on."""
        return as_engine_config(self.model)

    @property
    def engine(self) -> CrossEncoderEngine:
        """The process-wide shared engine (looked up on every call, never loaded here)."""
        return get_engine(self.engine_config)


# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Reranker(_Role):
    """Rank texts by relevance to a query with a one-logit cross-encoder.

    ``rank`` sorts (best first), applies ``score_threshold`` and then cuts to ``top_n``;
    ``score`` keeps input order. Scores are the model's raw logits, equal to
    sentence-transformers ``CrossEncoder.predict(..., activation_fn=Identity())``; texts
    longer than a window are scored window by window and take the max.

    Args:
        model: Hub id, local directory, or :class:`EngineConfig`.
        top_n: Keep at most this many texts (``None``: all).
        score_threshold: Drop texts whose raw logit is below this, before the cut.

    Example:
        >>> reranker = Reranker(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=3)
        >>> ranked = reranker.rank("what causes rain?", ["Rain is condensed vapour.", "Tokyo."])
        ... # doctest: +SKIP
        >>> [(r.index, round(r.score, 2)) for r in ranked]  # doctest: +SKIP
        [(0, 8.61), (1, -11.2)]
    """

    model: str | EngineConfig
    top_n: int | None = None
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        as_engine_config(self.model)
        check_count("top_n", self.top_n)
        threshold = check_number("score_threshold", self.score_threshold, optional=True)
        object.__setattr__(self, "score_threshold", threshold)

    def _check_head(self, engine: CrossEncoderEngine) -> None:
        require_one_logit(
            engine,
            needed_by="Reranker",
            instead="Use RelevanceGrader for multi-label classifiers.",
        )

    @staticmethod
    def _ranked(texts: Sequence[str], results: Sequence[SequenceScores]) -> list[RankedText]:
        ranked = []
        for index, (text, result) in enumerate(zip(texts, results, strict=True)):
            logit = result.window_logits[best_window(result.window_logits)][0]
            ranked.append(
                RankedText(
                    index=index,
                    text=text,
                    score=logit,
                    probability=sigmoid(logit),
                    num_windows=result.num_windows,
                )
            )
        return ranked

    def _select(
        self, ranked: list[RankedText], top_n: int | None, score_threshold: float | None
    ) -> list[RankedText]:
        order = select_top(
            [r.score for r in ranked],
            top_n=self.top_n if top_n is None else top_n,
            min_score=self.score_threshold if score_threshold is None else score_threshold,
        )
        return [ranked[i] for i in order]

    def score_texts(self, query: str, texts: Sequence[str]) -> list[RankedText]:
        """Score every text, in input order (no sorting, no cut)."""
        query, items = check_query(query), check_texts(texts)
        if not items:
            return []
        engine = self.engine
        self._check_head(engine)
        return self._ranked(items, engine.score_pairs([(query, t) for t in items]))

    async def ascore_texts(self, query: str, texts: Sequence[str]) -> list[RankedText]:
        """Async :meth:`score_texts`."""
        query, items = check_query(query), check_texts(texts)
        if not items:
            return []
        engine = self.engine
        await engine.aload()
        self._check_head(engine)
        return self._ranked(items, await engine.ascore_pairs([(query, t) for t in items]))

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """Raw relevance logits in input order."""
        return [r.score for r in self.score_texts(query, texts)]

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        """Async :meth:`score`."""
        return [r.score for r in await self.ascore_texts(query, texts)]

    def rank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        top_n: int | None = None,
        score_threshold: float | None = None,
    ) -> list[RankedText]:
        """Texts sorted best first, thresholded, cut to ``top_n`` (arguments override fields)."""
        return self._select(self.score_texts(query, texts), top_n, score_threshold)

    async def arank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        top_n: int | None = None,
        score_threshold: float | None = None,
    ) -> list[RankedText]:
        """Async :meth:`rank`."""
        return self._select(await self.ascore_texts(query, texts), top_n, score_threshold)


# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RelevanceGrader(_Role):
    """Grade each text relevant or not with a sequence classifier.

    Works with binary classifiers (``skshmjn/CRAG-ModernBert``: the positive class is
    read from ``id2label``, else index 1), multi-class classifiers through
    ``relevant_labels`` (the five OSMoSIS labels are recognised: ``ADDR_DIRECT`` and
    ``ADDR_PARTIAL`` are relevant), and one-logit rerankers through a sigmoid. A text is
    relevant when its relevance probability is at least ``threshold``.

    Args:
        model: Hub id, local directory, or :class:`EngineConfig`.
        threshold: Minimum relevance probability to count as relevant.
        relevant_labels: Label names that mean relevant (overrides the rules above).

    Example:
        >>> grader = RelevanceGrader(model="skshmjn/CRAG-ModernBert", threshold=0.5)
        >>> [g.relevant for g in grader.grade("rain?", ["Rain is condensed vapour."])]
        ... # doctest: +SKIP
        [True]
    """

    model: str | EngineConfig
    threshold: float = 0.5
    relevant_labels: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        as_engine_config(self.model)
        threshold = check_number("threshold", self.threshold, low=0.0, high=1.0)
        object.__setattr__(self, "threshold", threshold)
        labels = check_labels("relevant_labels", self.relevant_labels)
        object.__setattr__(self, "relevant_labels", labels)

    @staticmethod
    def _check_head(engine: CrossEncoderEngine) -> None:
        # Before any forward pass, so the refusal names the role to use instead.
        if engine.head.kind != "sequence":
            raise IncompatibleModelError(
                f"{engine.config.model!r} has a token-classification head; RelevanceGrader "
                "needs a sequence classifier (use EvidenceHighlighter for token heads)."
            )

    def _grades(
        self, engine: CrossEncoderEngine, texts: Sequence[str], results: Sequence[SequenceScores]
    ) -> list[Grade]:
        head = engine.head
        one_logit = head.num_labels == 1
        mask = None if one_logit else relevant_label_mask(head.id2label, self.relevant_labels)
        grades = []
        for index, (text, result) in enumerate(zip(texts, results, strict=True)):
            logits = result.window_logits[best_window(result.window_logits, mask)]
            probability = relevance_probability(logits, mask)
            relevant = probability >= self.threshold
            if one_logit:
                distribution = {"relevant": probability, "not_relevant": 1.0 - probability}
                label = "relevant" if relevant else "not_relevant"
            else:
                probabilities = softmax(logits)
                distribution = dict(zip(head.id2label, probabilities, strict=True))
                label = head.id2label[max(range(len(logits)), key=lambda i: probabilities[i])]
            grades.append(
                Grade(
                    index=index,
                    text=text,
                    label=label,
                    probability=probability,
                    relevant=relevant,
                    distribution=distribution,
                    num_windows=result.num_windows,
                )
            )
        return grades

    def grade(self, query: str, texts: Sequence[str]) -> list[Grade]:
        """One :class:`Grade` per text, in input order."""
        query, items = check_query(query), check_texts(texts)
        if not items:
            return []
        engine = self.engine
        self._check_head(engine)
        return self._grades(engine, items, engine.score_pairs([(query, t) for t in items]))

    async def agrade(self, query: str, texts: Sequence[str]) -> list[Grade]:
        """Async :meth:`grade`."""
        query, items = check_query(query), check_texts(texts)
        if not items:
            return []
        engine = self.engine
        await engine.aload()
        self._check_head(engine)
        results = await engine.ascore_pairs([(query, t) for t in items])
        return self._grades(engine, items, results)


# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EvidenceHighlighter(_Role):
    """Find the character spans of each text that support an answer to the query.

    Returns what ``KRLabsOrg/acl-verbatim-modernbert``'s ``.process()`` returns for the same
    model and settings. A token's evidence probability is the summed probability of its
    evidence labels (every label but ``O``: see ``evidence_labels``). Texts longer than
    ``max_length`` tokens are read in windows overlapping by ``doc_stride`` tokens, and
    each window on its own yields raw spans: runs of consecutive text tokens whose
    probability reaches ``threshold``, from the first token's start to the last token's
    end, scored by the run's largest probability. The raw spans of all windows are pooled
    (overlapping windows are not averaged), sorted, and merged where a span starts at most
    ``merge_gap_chars`` characters after the previous one ends (larger end, larger score);
    merged spans shorter than ``min_span_chars`` are dropped. Sentence scores: a
    character scores the largest probability of the evidence tokens covering it (0 if
    none), a sentence the mean over its characters
    (:func:`~crag_integrations.scoring.window_sentence_scores`).

    Args:
        model: Hub id, local directory, or :class:`EngineConfig` of a token classifier.
        threshold: Evidence probability cut-off (0.2 balanced, 0.5 high precision).
        max_length: Tokens per window (``None``: the engine's, i.e. the model's limit,
            at most 8192 like the reference).
        doc_stride: Tokens of overlap between windows.
        min_span_chars: Drop spans shorter than this many characters.
        merge_gap_chars: Merge spans separated by at most this many characters.
        return_sentence_scores: Also score every sentence (mean character score).
        separator: Joins the spans into ``Highlight.trimmed_text``.
        evidence_labels: Token labels that mark evidence (default: all but "outside").
        window_pooling: ``"max"`` (the reference): read every window on its own.
            ``"mean"``: average the probabilities of overlapping windows into one token
            sequence first, then apply the same span and sentence rules to it.

    Example:
        >>> highlighter = EvidenceHighlighter(model="KRLabsOrg/acl-verbatim-modernbert")
        >>> result = highlighter.highlight("What is ModernBERT?", [context])[0]
        ... # doctest: +SKIP
        >>> [(s.text, round(s.score, 2)) for s in result.spans]  # doctest: +SKIP
        [('ModernBERT is a long-context encoder for NLP.', 0.93)]
    """

    model: str | EngineConfig
    threshold: float = 0.2
    max_length: int | None = None
    doc_stride: int = 256
    min_span_chars: int = 10
    merge_gap_chars: int = 20
    return_sentence_scores: bool = False
    separator: str = " ... "
    evidence_labels: tuple[str, ...] | None = None
    window_pooling: WindowPooling = "max"

    #: The reference's default window (its ModernBERT's context); ``max_length=None`` caps
    #: the model's limit at it.
    reference_max_length: ClassVar[int] = 8192

    def __post_init__(self) -> None:
        as_engine_config(self.model)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], not {self.threshold}")
        if self.doc_stride < 0 or self.min_span_chars < 0 or self.merge_gap_chars < 0:
            raise ValueError("doc_stride, min_span_chars and merge_gap_chars must be >= 0")
        if self.window_pooling not in ("max", "mean"):
            raise ValueError(f"window_pooling must be 'max' or 'mean', not {self.window_pooling!r}")
        if self.evidence_labels is not None:
            object.__setattr__(self, "evidence_labels", tuple(self.evidence_labels))

    def _window_length(self, engine: CrossEncoderEngine) -> int:
        if self.max_length is not None:
            return self.max_length
        return min(self.reference_max_length, engine.max_length)

    def _highlights(
        self, engine: CrossEncoderEngine, texts: Sequence[str], results: Sequence[TokenScores]
    ) -> list[Highlight]:
        mask = evidence_label_mask(engine.head.id2label, self.evidence_labels)
        highlights = []
        for index, (text, result) in enumerate(zip(texts, results, strict=True)):
            windows = evidence_windows(result, mask, pooling=self.window_pooling)
            spans = tuple(
                extract_window_spans(
                    text,
                    windows,
                    threshold=self.threshold,
                    min_span_chars=self.min_span_chars,
                    merge_gap_chars=self.merge_gap_chars,
                )
            )
            sentences = (
                tuple(window_sentence_scores(text, windows, threshold=self.threshold))
                if self.return_sentence_scores
                else None
            )
            highlights.append(
                Highlight(
                    index=index,
                    text=text,
                    spans=spans,
                    trimmed_text=join_spans(spans, self.separator),
                    sentences=sentences,
                    num_windows=result.num_windows,
                )
            )
        return highlights

    def highlight(self, query: str, texts: Sequence[str]) -> list[Highlight]:
        """One :class:`Highlight` per text, in input order."""
        query, items = check_query(query), check_texts(texts)
        if not items:
            return []
        engine = self.engine
        results = engine.token_scores(
            [(query, t) for t in items],
            max_length=self._window_length(engine),
            stride=self.doc_stride,
        )
        return self._highlights(engine, items, results)

    async def ahighlight(self, query: str, texts: Sequence[str]) -> list[Highlight]:
        """Async :meth:`highlight`."""
        query, items = check_query(query), check_texts(texts)
        if not items:
            return []
        engine = self.engine
        await engine.aload()
        results = await engine.atoken_scores(
            [(query, t) for t in items],
            max_length=self._window_length(engine),
            stride=self.doc_stride,
        )
        return self._highlights(engine, items, results)
