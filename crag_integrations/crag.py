"""Corrective RAG: the retrieval evaluator's three-way action and knowledge refinement.

Follows *Corrective Retrieval Augmented Generation* (Yan et al., 2024):

- **Action.** Every retrieved document gets a relevance score. The query's action is
  ``"correct"`` if any document scores at or above ``upper``, ``"incorrect"`` if every
  document scores below ``lower`` (or there are none), and ``"ambiguous"`` otherwise.
- **Knowledge refinement** (decompose, then recompose). Documents are split into strips
  (sentences, groups of sentences, or fixed word windows); every strip of every document is
  scored against the query in one batched engine call; relevant strips are kept (by
  ``threshold`` and/or the ``top_k`` best overall) and recomposed in their original order.

Scores are relevance probabilities in ``[0, 1]``: the sigmoid of a one-logit reranker's
logit, or a classifier's summed probability of its relevant labels (see
:class:`~crag_integrations.roles.RelevanceGrader`). With a one-logit reranker you may set
``scale="logit"`` to put the thresholds on raw logits instead, as the CRAG reference code
did (upper 0.592 / lower -0.995 on its own T5 evaluator's logits for PopQA; those numbers
do not transfer to other models). Calibrate on your own labelled pairs with
:func:`calibrate_thresholds`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from crag_integrations.backends import ModelRef, check_model
from crag_integrations.errors import IncompatibleModelError
from crag_integrations.inputs import (
    check_count,
    check_labels,
    check_number,
    check_query,
    check_texts,
)
from crag_integrations.roles import RelevanceGrader, Reranker
from crag_integrations.scoring import select_top, sentence_ranges
from crag_integrations.types import (
    CragAction,
    CragEvaluation,
    DocumentEvaluation,
    DroppedText,
    NoEvidencePolicy,
    PipelineResult,
    ProcessedText,
    RefinedDocument,
    ScoreScale,
    Span,
)

__all__ = [
    "DEFAULT_LOWER",
    "DEFAULT_UPPER",
    "CragAction",
    "CragEvaluation",
    "CragEvaluator",
    "KnowledgeRefiner",
    "RefinedDocument",
    "ScoreScale",
    "StripMode",
    "calibrate_thresholds",
    "check_action_thresholds",
    "decide_action",
    "document_actions",
    "knowledge_for_generation",
    "select_strips",
    "split_strips",
]

StripMode = Literal["sentences", "sentence_groups", "words"]

#: Default upper threshold on the relevance probability: a document at least this likely
#: relevant makes the retrieval "correct". A starting point, not a calibration.
DEFAULT_UPPER = 0.6
#: Default lower threshold: when every document is less likely relevant than this, the
#: retrieval is "incorrect". A starting point, not a calibration.
DEFAULT_LOWER = 0.2


def decide_action(scores: Sequence[float], *, upper: float, lower: float) -> CragAction:
    """The CRAG action for one query from its documents' relevance scores.

    Example:
        >>> decide_action([0.1, 0.7], upper=0.6, lower=0.2)
        'correct'
        >>> decide_action([0.1, 0.15], upper=0.6, lower=0.2)
        'incorrect'
        >>> decide_action([0.1, 0.4], upper=0.6, lower=0.2)
        'ambiguous'
        >>> decide_action([], upper=0.6, lower=0.2)
        'incorrect'
    """
    if lower > upper:
        raise ValueError(f"lower ({lower}) must not exceed upper ({upper})")
    if any(score >= upper for score in scores):
        return "correct"
    if all(score < lower for score in scores):
        return "incorrect"
    return "ambiguous"


def document_actions(
    scores: Sequence[float], *, upper: float, lower: float
) -> tuple[CragAction, ...]:
    """Each document's own band: ``correct`` (>= upper), ``incorrect`` (< lower), else
    ``ambiguous``."""
    return tuple(decide_action([score], upper=upper, lower=lower) for score in scores)


def calibrate_thresholds(
    scores: Sequence[float],
    labels: Sequence[bool],
    *,
    precision_at_upper: float = 0.9,
    recall_above_lower: float = 0.95,
) -> tuple[float, float]:
    """Pick ``(upper, lower)`` from labelled (query, document) scores.

    ``upper`` is the smallest score ``u`` such that the documents scoring ``>= u`` are
    relevant with at least ``precision_at_upper`` precision (so "correct" is
    trustworthy); tied scores are counted together. When no score reaches that
    precision, ``upper`` is just above the highest score, so "correct" never fires on
    data like this. ``lower`` is the largest score below which at most
    ``1 - recall_above_lower`` of the relevant documents fall (so "incorrect" rarely
    throws away relevant evidence). If ``lower`` would exceed ``upper`` it is clamped to
    ``upper``. Use scores on the scale the evaluator will use (``probability`` or
    ``logit``).

    Args:
        scores: One relevance score per labelled (query, document) pair.
        labels: ``True`` where the document is relevant to its query.
        precision_at_upper: Wanted precision of "correct" documents, in ``(0, 1]``.
        recall_above_lower: Share of relevant documents that must score at or above
            ``lower``, in ``(0, 1]``.

    Returns:
        ``(upper, lower)`` with ``lower <= upper``.

    Raises:
        ValueError: On empty or mismatched inputs, targets outside ``(0, 1]``, or labels
            without a single relevant example.

    Example:
        >>> calibrate_thresholds([0.9, 0.8, 0.3, 0.2, 0.1], [True, True, False, True, False],
        ...                      precision_at_upper=1.0, recall_above_lower=1.0)
        (0.8, 0.2)
    """
    if len(scores) != len(labels) or not scores:
        raise ValueError("scores and labels must be non-empty and of equal length")
    if not (0.0 < precision_at_upper <= 1.0 and 0.0 < recall_above_lower <= 1.0):
        raise ValueError("precision_at_upper and recall_above_lower must lie in (0, 1]")
    if any(math.isnan(score) for score in scores):
        raise ValueError("scores contain NaN")
    if not any(labels):
        raise ValueError("labels contain no relevant example; cannot calibrate")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    upper = max(scores) + max(1e-9, abs(max(scores)) * 1e-9)
    hits = 0
    for rank, index in enumerate(order, start=1):
        hits += bool(labels[index])
        tie_continues = rank < len(order) and scores[order[rank]] == scores[index]
        # Precision of "score >= s" counts every document tied at s, so only judge a
        # threshold at the last member of its tie group.
        if not tie_continues and hits / rank >= precision_at_upper:
            upper = scores[index]
    relevant_scores = sorted(s for s, label in zip(scores, labels, strict=True) if label)
    allowed_misses = int((1.0 - recall_above_lower) * len(relevant_scores) + 1e-9)
    lower = relevant_scores[allowed_misses]
    return upper, min(lower, upper)


def check_action_thresholds(upper: float, lower: float, *, scale: ScoreScale) -> None:
    """Raise ``ValueError`` unless ``lower <= upper`` and, on the probability scale, both
    lie in ``[0, 1]``: the one validation of CRAG action thresholds, wherever they are set.

    Example:
        >>> check_action_thresholds(0.6, 0.2, scale="probability")
    """
    if scale not in ("probability", "logit"):
        raise ValueError(f"scale must be 'probability' or 'logit', not {scale!r}")
    check_number("upper", upper)
    check_number("lower", lower)
    if lower > upper:
        raise ValueError(f"lower ({lower}) must not exceed upper ({upper})")
    if scale == "probability" and not (0.0 <= lower <= 1.0 and 0.0 <= upper <= 1.0):
        raise ValueError("probability thresholds must lie in [0, 1]; use scale='logit'")


# --------------------------------------------------------------------------------------
# Scoring shared by the evaluator and the refiner: through the roles, never the engine

_CRAG_ADVICE = (
    " The CRAG evaluator and refiner score with scale='logit' only on one-logit rerankers;"
    " use scale='probability' for classifiers."
)


@dataclass(frozen=True, kw_only=True)
class _Scorer:
    model: ModelRef
    scale: ScoreScale = "probability"
    relevant_labels: tuple[str, ...] | None = None
    _reranker: Reranker | None = field(default=None, init=False, repr=False, compare=False)
    _grader: RelevanceGrader | None = field(default=None, init=False, repr=False, compare=False)

    def _validate_scorer(self) -> None:
        check_model(self.model)  # a TypeError for anything but an id, path, config or backend
        if self.scale not in ("probability", "logit"):
            raise ValueError(f"scale must be 'probability' or 'logit', not {self.scale!r}")
        labels = check_labels("relevant_labels", self.relevant_labels)
        object.__setattr__(self, "relevant_labels", labels)
        # The logit scale is a one-logit reranker's raw score; the probability scale is a
        # relevance grader's probability (the sigmoid for one-logit models).
        if self.scale == "logit":
            object.__setattr__(self, "_reranker", Reranker(model=self.model))
        else:
            grader = RelevanceGrader(model=self.model, relevant_labels=self.relevant_labels)
            object.__setattr__(self, "_grader", grader)

    @property
    def role(self) -> Reranker | RelevanceGrader:
        """The role that scores: a :class:`Reranker` on the logit scale, else a
        :class:`RelevanceGrader` (its engine is shared, looked up, never loaded here)."""
        role = self._reranker if self._reranker is not None else self._grader
        assert role is not None
        return role

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """Relevance scores of ``texts`` on ``scale``, in input order, in one engine call."""
        if not texts:
            return []
        if self._reranker is not None:
            try:
                return self._reranker.score(query, texts)
            except IncompatibleModelError as error:
                raise IncompatibleModelError(f"{error}{_CRAG_ADVICE}") from error
        assert self._grader is not None
        return [grade.probability for grade in self._grader.grade(query, texts)]

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        """Async :meth:`score`."""
        if not texts:
            return []
        if self._reranker is not None:
            try:
                return await self._reranker.ascore(query, texts)
            except IncompatibleModelError as error:
                raise IncompatibleModelError(f"{error}{_CRAG_ADVICE}") from error
        assert self._grader is not None
        return [grade.probability for grade in await self._grader.agrade(query, texts)]


# --------------------------------------------------------------------------------------
# Evaluator


@dataclass(frozen=True, kw_only=True)
class CragEvaluator(_Scorer):
    """Score retrieved documents and decide the CRAG action, in one batched call.

    Args:
        model: A one-logit reranker, a binary grader or a multi-class grader (hub id,
            local path, :class:`EngineConfig` or a scoring backend).
        upper: Score at or above which a document makes the retrieval ``correct``.
        lower: Score below which every document must fall for ``incorrect``.
        scale: ``"probability"`` (default, any head) or ``"logit"`` (one-logit rerankers).
        relevant_labels: For multi-class graders, the labels that mean relevant.
        drop_incorrect: In :meth:`run`, drop the documents whose own band is
            ``"incorrect"`` (reason ``"incorrect"``); by default every document is kept.

    Example:
        >>> evaluator = CragEvaluator(model="cross-encoder/ms-marco-MiniLM-L6-v2")
        >>> evaluator.evaluate("what causes rain?", passages).action  # doctest: +SKIP
        'correct'
    """

    upper: float = DEFAULT_UPPER
    lower: float = DEFAULT_LOWER
    drop_incorrect: bool = False

    def __post_init__(self) -> None:
        self._validate_scorer()
        check_action_thresholds(self.upper, self.lower, scale=self.scale)

    def _evaluation(self, scores: list[float]) -> CragEvaluation:
        return CragEvaluation(
            action=decide_action(scores, upper=self.upper, lower=self.lower),
            scores=tuple(scores),
            document_actions=document_actions(scores, upper=self.upper, lower=self.lower),
            upper=self.upper,
            lower=self.lower,
            scale=self.scale,
        )

    def _result(self, texts: Sequence[str], evaluation: CragEvaluation) -> PipelineResult:
        kept: list[ProcessedText] = []
        dropped: list[DroppedText] = []
        for index, (text, score, band) in enumerate(
            zip(texts, evaluation.scores, evaluation.document_actions, strict=True)
        ):
            judged = DocumentEvaluation(score=score, action=band)
            if self.drop_incorrect and band == "incorrect":
                dropped.append(
                    DroppedText(index=index, text=text, reason="incorrect", evaluation=judged)
                )
            else:
                kept.append(
                    ProcessedText(index=index, text=text, output_text=text, evaluation=judged)
                )
        return PipelineResult(
            kept=tuple(kept),
            dropped=tuple(dropped),
            action=evaluation.action,
            evaluation=evaluation,
        )

    def evaluate(self, query: str, texts: Sequence[str]) -> CragEvaluation:
        """Score ``texts`` and decide the action (no texts: ``incorrect``, nothing scored)."""
        query, items = check_query(query), check_texts(texts)
        return self._evaluation(self.score(query, items))

    async def aevaluate(self, query: str, texts: Sequence[str]) -> CragEvaluation:
        """Async :meth:`evaluate`."""
        query, items = check_query(query), check_texts(texts)
        return self._evaluation(await self.ascore(query, items))

    def run(self, query: str, texts: Sequence[str]) -> PipelineResult:
        """:meth:`evaluate`, in the pipeline's result shape: every document kept in input
        order with its :class:`~crag_integrations.types.DocumentEvaluation` (less the
        ``incorrect`` ones when ``drop_incorrect``), the query's ``action`` and the whole
        ``evaluation``."""
        items = check_texts(texts)
        return self._result(items, self.evaluate(query, items))

    async def arun(self, query: str, texts: Sequence[str]) -> PipelineResult:
        """Async :meth:`run`."""
        items = check_texts(texts)
        return self._result(items, await self.aevaluate(query, items))


# --------------------------------------------------------------------------------------
# Knowledge refinement

_WORD = re.compile(r"\S+")


def split_strips(
    text: str, *, mode: StripMode = "sentences", group_size: int = 3, window_words: int = 50
) -> list[tuple[int, int]]:
    """Character ranges of ``text``'s strips, in order, whitespace-trimmed and non-empty.

    ``sentences``: one strip per sentence. ``sentence_groups``: consecutive groups of
    ``group_size`` sentences. ``words``: consecutive windows of ``window_words``
    whitespace-separated words. A text with no non-space character has no strips; a text
    with no sentence or word boundary (one giant token) is a single strip.

    Example:
        >>> split_strips("One. Two. Three.", mode="sentence_groups", group_size=2)
        [(0, 9), (10, 16)]
    """
    if group_size < 1 or window_words < 1:
        raise ValueError("group_size and window_words must be >= 1")
    if mode == "sentences":
        return sentence_ranges(text)
    if mode == "sentence_groups":
        sentences = sentence_ranges(text)
        return [
            (sentences[i][0], sentences[min(i + group_size, len(sentences)) - 1][1])
            for i in range(0, len(sentences), group_size)
        ]
    if mode == "words":
        words = [m.span() for m in _WORD.finditer(text)]
        return [
            (words[i][0], words[min(i + window_words, len(words)) - 1][1])
            for i in range(0, len(words), window_words)
        ]
    raise ValueError(f"mode must be 'sentences', 'sentence_groups' or 'words', not {mode!r}")


def select_strips(
    scores: Sequence[float], *, threshold: float | None, top_k: int | None
) -> list[int]:
    """Indices of the strips to keep, in their original order.

    Strips scoring below ``threshold`` go; of the rest, the ``top_k`` best survive (ties
    keep earlier strips). ``None`` disables either rule.

    Example:
        >>> select_strips([0.9, 0.1, 0.5, 0.7], threshold=0.4, top_k=2)
        [0, 3]
    """
    return sorted(select_top(scores, top_n=top_k, min_score=threshold))


@dataclass(frozen=True, kw_only=True)
class KnowledgeRefiner(_Scorer):
    """Decompose documents into strips, keep the relevant ones, recompose them.

    A model-agnostic alternative to the token-classifier highlighter: any one-logit
    reranker or relevance grader can refine. All strips of all documents are scored in
    one batched engine call. ``top_k`` counts across all documents, as in the CRAG
    reference implementation.

    Args:
        model: Reranker or grader (hub id, local path, :class:`EngineConfig` or scoring
            backend).
        mode: ``"sentences"``, ``"sentence_groups"`` or ``"words"``.
        group_size: Sentences per strip for ``sentence_groups``.
        window_words: Words per strip for ``words``.
        threshold: Minimum strip score to keep (same scale as ``scale``); ``None`` off.
        top_k: Keep at most this many strips overall; ``None`` off.
        separator: Joins a document's kept strips.
        scale: ``"probability"`` or ``"logit"`` (one-logit rerankers only).
        relevant_labels: For multi-class graders, the labels that mean relevant.
        on_no_evidence: In :meth:`run`, what happens to a document none of whose strips
            survive: ``"keep"`` it whole (its original text is the output) or ``"drop"``
            it (reason ``"no_evidence"``).

    Bad input never raises: a document without strips (empty or whitespace-only)
    refines to ``refined_text == ""``, ``strips == ()`` and ``num_strips == 0`` and costs
    no model call; a document with no sentence or word boundary (one giant token) is a
    single strip, scored like any other (the engine reads a long strip window by window
    and keeps its best window), so it is kept or dropped whole. A document none of whose
    strips survive also refines to ``""``: the caller decides whether to fall back to
    the original text (:meth:`run` decides that by ``on_no_evidence``).

    Example:
        >>> refiner = KnowledgeRefiner(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_k=5)
        >>> [d.refined_text for d in refiner.refine("rain?", passages)]  # doctest: +SKIP
    """

    mode: StripMode = "sentences"
    group_size: int = 3
    window_words: int = 50
    threshold: float | None = 0.5
    top_k: int | None = None
    separator: str = " "
    on_no_evidence: NoEvidencePolicy = "keep"

    def __post_init__(self) -> None:
        self._validate_scorer()
        if self.on_no_evidence not in ("keep", "drop"):
            raise ValueError(
                f"on_no_evidence must be 'keep' or 'drop', not {self.on_no_evidence!r}"
            )
        split_strips("", mode=self.mode, group_size=self.group_size, window_words=self.window_words)
        if self.threshold is None and self.top_k is None:
            raise ValueError("set threshold, top_k or both; otherwise nothing is refined")
        check_count("top_k", self.top_k)
        check_number("threshold", self.threshold, optional=True)
        if (
            self.scale == "probability"
            and self.threshold is not None
            and not 0.0 <= self.threshold <= 1.0
        ):
            raise ValueError("a probability threshold must lie in [0, 1]; use scale='logit'")

    def _strips(self, texts: Sequence[str]) -> list[tuple[int, int, int]]:
        return [
            (doc, start, end)
            for doc, text in enumerate(texts)
            for start, end in split_strips(
                text, mode=self.mode, group_size=self.group_size, window_words=self.window_words
            )
        ]

    def _recompose(
        self, texts: Sequence[str], strips: list[tuple[int, int, int]], scores: list[float]
    ) -> list[RefinedDocument]:
        keep = set(select_strips(scores, threshold=self.threshold, top_k=self.top_k))
        kept: list[list[Span]] = [[] for _ in texts]
        counts = [0] * len(texts)
        for position, (doc, start, end) in enumerate(strips):
            counts[doc] += 1
            if position in keep:
                kept[doc].append(
                    Span(start=start, end=end, text=texts[doc][start:end], score=scores[position])
                )
        return [
            RefinedDocument(
                index=doc,
                text=text,
                refined_text=self.separator.join(s.text for s in kept[doc]),
                strips=tuple(kept[doc]),
                num_strips=counts[doc],
            )
            for doc, text in enumerate(texts)
        ]

    def refine(self, query: str, texts: Sequence[str]) -> list[RefinedDocument]:
        """Refine every document, in input order."""
        query, items = check_query(query), check_texts(texts)
        strips = self._strips(items)
        scores = self.score(query, [items[d][s:e] for d, s, e in strips])
        return self._recompose(items, strips, scores)

    async def arefine(self, query: str, texts: Sequence[str]) -> list[RefinedDocument]:
        """Async :meth:`refine`."""
        query, items = check_query(query), check_texts(texts)
        strips = self._strips(items)
        scores = await self.ascore(query, [items[d][s:e] for d, s, e in strips])
        return self._recompose(items, strips, scores)

    def _result(self, refined: list[RefinedDocument]) -> PipelineResult:
        kept: list[ProcessedText] = []
        dropped: list[DroppedText] = []
        for item in refined:
            if item.strips:
                output = item.refined_text
            elif self.on_no_evidence == "drop":
                dropped.append(
                    DroppedText(
                        index=item.index, text=item.text, reason="no_evidence", refined=item
                    )
                )
                continue
            else:
                output = item.text
            kept.append(
                ProcessedText(index=item.index, text=item.text, output_text=output, refined=item)
            )
        return PipelineResult(kept=tuple(kept), dropped=tuple(dropped))

    def run(self, query: str, texts: Sequence[str]) -> PipelineResult:
        """:meth:`refine`, in the pipeline's result shape: each document's output text is its
        kept strips, or, when none survive, its original text (``on_no_evidence="keep"``) or
        nothing (``"drop"``: it is dropped with reason ``"no_evidence"``)."""
        return self._result(self.refine(query, texts))

    async def arun(self, query: str, texts: Sequence[str]) -> PipelineResult:
        """Async :meth:`run`."""
        return self._result(await self.arefine(query, texts))


def knowledge_for_generation(
    refined: Sequence[RefinedDocument],
    document_actions: Sequence[CragAction],
    action: CragAction,
) -> list[str]:
    """The internal knowledge to generate from after refinement, one text per document.

    The kept strips of each document that has some. When the retrieval is ``"correct"``
    but refinement kept no strip at all, the documents whose own band is ``"correct"``,
    whole: a correct retrieval is never answered from no context.

    Args:
        refined: The refiner's result, one per document, in input order.
        document_actions: Each document's own CRAG band, in the same order.
        action: The query's CRAG action.

    Example:
        >>> empty = RefinedDocument(index=0, text="Rain.", refined_text="", strips=(), num_strips=1)
        >>> knowledge_for_generation([empty], ["correct"], "correct")
        ['Rain.']
    """
    if len(refined) != len(document_actions):
        raise ValueError("give one document action per refined document")
    context = [item.refined_text for item in refined if item.strips]
    if context or action != "correct":
        return context
    return [
        item.text for item, band in zip(refined, document_actions, strict=True) if band == "correct"
    ]
