"""The three model roles on the shared engine: reranker, relevance grader, span highlighter.

A role is a frozen configuration plus one verb (and its ``a``-prefixed async twin).
Constructing a role never loads a model: the shared engine loads on the first call, and
every role naming the same model (and device, dtype, revision) shares the loaded weights.
A role's ``model`` may also be a :class:`~crag_integrations.backends.ScoringBackend` (a
remote engine, say): the role then scores on it and decides exactly as it does locally.
Input checks are those of :mod:`crag_integrations.inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from crag_integrations.backends import ModelRef, ScoringBackend, check_model
from crag_integrations.config import EngineConfig, as_engine_config
from crag_integrations.engine import get_engine
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


class _Role:
    """Shared plumbing: the engine behind a role's ``model`` field."""

    model: ModelRef

    @property
    def engine_config(self) -> EngineConfig:
        """The :class:`EngineConfig` this role runs on (a backend's own ``config``)."""
        if isinstance(self.model, str | EngineConfig):
            return as_engine_config(self.model)
        return self.model.config

    @property
    def engine(self) -> ScoringBackend:
        """The process-wide shared engine (looked up on every call, never loaded here), or
        the backend given as ``model``."""
        if isinstance(self.model, str | EngineConfig):
            return get_engine(as_engine_config(self.model))
        return self.model


# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Reranker(_Role):
    """Rank texts by relevance to a query with a one-logit cross-encoder.

    ``rank`` sorts (best first), applies ``score_threshold`` and then cuts to ``top_n``;
    ``score`` keeps input order. Scores are the model's raw logits, equal to
    sentence-transformers ``CrossEncoder.predict(..., activation_fn=Identity())``; texts
    longer than a window are scored window by window and take the max.

    Args:
        model: Hub id, local directory, :class:`EngineConfig`, or a scoring backend.
        top_n: Keep at most this many texts (``None``: all).
        score_threshold: Drop texts whose raw logit is below this, before the cut.

    Example:
        >>> reranker = Reranker(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=3)
        >>> ranked = reranker.rank("what causes rain?", ["Rain is condensed vapour.", "Tokyo."])
        ... # doctest: +SKIP
        >>> [(r.index, round(r.score, 2)) for r in ranked]  # doctest: +SKIP
        [(0, 8.61), (1, -11.2)]
    """

    model: ModelRef
    top_n: int | None = None
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        check_model(self.model)
        check_count("top_n", self.top_n)
        threshold = check_number("score_threshold", self.score_threshold, optional=True)
        object.__setattr__(self, "score_threshold", threshold)

    @staticmethod
    def _check_head(engine: ScoringBackend) -> None:
        # Before any forward pass, so that a grader's logits are never read as relevance.
        head = engine.head
        if head.kind != "sequence" or head.num_labels != 1:
            raise IncompatibleModelError(
                f"{engine.config.model!r} has a {head.kind}-classification head with "
                f"{head.num_labels} labels; Reranker needs a one-logit cross-encoder "
                "(sequence classification). Use RelevanceGrader for multi-label classifiers."
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
        # Overrides get the same checks as the fields (they also arrive from HTTP routes).
        cut = self.top_n if top_n is None else check_count("top_n", top_n)
        floor = (
            self.score_threshold
            if score_threshold is None
            else check_number("score_threshold", score_threshold)
        )
        order = select_top([r.score for r in ranked], top_n=cut, min_score=floor)
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
        """Texts sorted best first, thresholded, cut to ``top_n``.

        ``top_n`` / ``score_threshold`` given here replace the fields for this call (checked
        like them); ``None`` keeps the field's value.
        """
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
        model: Hub id, local directory, :class:`EngineConfig`, or a scoring backend.
        threshold: Minimum relevance probability to count as relevant.
        relevant_labels: Label names that mean relevant (overrides the rules above).

    Example:
        >>> grader = RelevanceGrader(model="skshmjn/CRAG-ModernBert", threshold=0.5)
        >>> [g.relevant for g in grader.grade("rain?", ["Rain is condensed vapour."])]
        ... # doctest: +SKIP
        [True]
    """

    model: ModelRef
    threshold: float = 0.5
    relevant_labels: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        check_model(self.model)
        threshold = check_number("threshold", self.threshold, low=0.0, high=1.0)
        object.__setattr__(self, "threshold", threshold)
        labels = check_labels("relevant_labels", self.relevant_labels)
        object.__setattr__(self, "relevant_labels", labels)

    @staticmethod
    def _check_head(engine: ScoringBackend) -> None:
        # Before any forward pass, so the refusal names the role to use instead.
        if engine.head.kind != "sequence":
            raise IncompatibleModelError(
                f"{engine.config.model!r} has a token-classification head; RelevanceGrader "
                "needs a sequence classifier (use EvidenceHighlighter for token heads)."
            )

    def _grades(
        self, engine: ScoringBackend, texts: Sequence[str], results: Sequence[SequenceScores]
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
        model: Hub id, local directory, :class:`EngineConfig` or scoring backend of a
            token classifier.
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

    model: ModelRef
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
        check_model(self.model)
        threshold = check_number("threshold", self.threshold, low=0.0, high=1.0)
        object.__setattr__(self, "threshold", threshold)
        for name in ("doc_stride", "min_span_chars", "merge_gap_chars"):
            check_count(name, getattr(self, name), optional=False)
        length = check_count("max_length", self.max_length)
        if length is not None and length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, not {length}")
        if not isinstance(self.separator, str):
            raise TypeError(f"separator must be a str, not {type(self.separator).__name__}")
        if not isinstance(self.return_sentence_scores, bool):
            raise TypeError("return_sentence_scores must be True or False")
        if self.window_pooling not in ("max", "mean"):
            raise ValueError(f"window_pooling must be 'max' or 'mean', not {self.window_pooling!r}")
        labels = check_labels("evidence_labels", self.evidence_labels)
        object.__setattr__(self, "evidence_labels", labels)

    def _window_length(self, engine: ScoringBackend) -> int:
        if self.max_length is not None:
            return self.max_length
        return min(self.reference_max_length, engine.max_length)

    def _highlights(
        self, engine: ScoringBackend, texts: Sequence[str], results: Sequence[TokenScores]
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
