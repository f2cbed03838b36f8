"""Rerank, then grade and filter, then highlight and trim, in one call.

Every stage is optional. Each input text ends up either in ``PipelineResult.kept`` (in
final order) or in ``PipelineResult.dropped`` with the rule that dropped it; indices
always point back into the caller's list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from crag_integrations.crag import check_action_thresholds, decide_action
from crag_integrations.inputs import check_query, check_texts
from crag_integrations.roles import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.scoring import select_top
from crag_integrations.types import (
    CragAction,
    DroppedText,
    DropReason,
    Grade,
    Highlight,
    NoEvidencePolicy,
    PipelineResult,
    ProcessedText,
    RankedText,
)

__all__ = ["NoEvidencePolicy", "RerankGradeTrimPipeline", "action_scores"]


@dataclass
class _Draft:
    """Mutable working state of one text while it moves through the stages."""

    index: int
    text: str
    ranked: RankedText | None = None
    grade: Grade | None = None
    highlight: Highlight | None = None

    def dropped(self, reason: DropReason) -> DroppedText:
        return DroppedText(
            index=self.index,
            text=self.text,
            reason=reason,
            ranked=self.ranked,
            grade=self.grade,
            highlight=self.highlight,
        )


@dataclass(frozen=True, kw_only=True)
class RerankGradeTrimPipeline:
    """The three roles in sequence, over one query's retrieved texts.

    1. ``reranker`` (optional): sort; drop texts below its ``score_threshold`` and beyond
       its ``top_n``.
    2. ``grader`` (optional): drop texts it grades not relevant.
    3. ``highlighter`` (optional): replace each text by its evidence spans; texts with no
       evidence are kept whole (``on_no_evidence="keep"``) or dropped (``"drop"``).

    With ``action_upper`` and ``action_lower`` (both or neither), the same run also decides
    the query's CRAG action: :func:`~crag_integrations.crag.decide_action` over
    :func:`action_scores` (the grade probabilities of every graded text when a grader
    runs, else the reranker probabilities of every text), in ``PipelineResult.action``.

    Args:
        reranker: A :class:`Reranker`, or ``None`` to keep input order.
        grader: A :class:`RelevanceGrader`, or ``None`` to skip filtering.
        highlighter: An :class:`EvidenceHighlighter`, or ``None`` to keep texts whole.
        on_no_evidence: What to do with a text in which the highlighter found nothing.
        action_upper: Relevance probability at or above which one text makes the action
            ``"correct"`` (``None``: decide no action).
        action_lower: Relevance probability below which every text must fall for
            ``"incorrect"`` (``None``: decide no action).

    Example:
        >>> pipeline = RerankGradeTrimPipeline(
        ...     reranker=Reranker(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=5),
        ...     grader=RelevanceGrader(model="skshmjn/CRAG-ModernBert"),
        ... )
        >>> result = pipeline.run("what causes rain?", passages)  # doctest: +SKIP
        >>> [item.index for item in result.kept]  # doctest: +SKIP
        [3, 0]
    """

    reranker: Reranker | None = None
    grader: RelevanceGrader | None = None
    highlighter: EvidenceHighlighter | None = None
    on_no_evidence: NoEvidencePolicy = "keep"
    action_upper: float | None = None
    action_lower: float | None = None

    def __post_init__(self) -> None:
        if self.on_no_evidence not in ("keep", "drop"):
            raise ValueError(
                f"on_no_evidence must be 'keep' or 'drop', not {self.on_no_evidence!r}"
            )
        if (self.action_upper is None) != (self.action_lower is None):
            raise ValueError(
                "set both action_upper and action_lower to decide the CRAG action, or neither"
            )
        if self.action_upper is not None and self.action_lower is not None:
            check_action_thresholds(self.action_upper, self.action_lower, scale="probability")
            if self.reranker is None and self.grader is None:
                raise ValueError(
                    "the CRAG action is decided on relevance scores: add a reranker or a "
                    "relevance_filter (a grader), or use the CRAG evaluator (CragEvaluator, "
                    "CragEvaluatorCompressor, CragEvaluatorPostprocessor)"
                )

    @property
    def decides_action(self) -> bool:
        """Whether :meth:`run` decides the CRAG action (action thresholds are set)."""
        return self.action_upper is not None

    def _action(self, result: PipelineResult) -> CragAction | None:
        if self.action_upper is None or self.action_lower is None:
            return None
        return decide_action(
            self.action_scores(result), upper=self.action_upper, lower=self.action_lower
        )

    def action_scores(self, result: PipelineResult) -> list[float]:
        """The scores this pipeline decides the CRAG action on (see :func:`action_scores`)."""
        return action_scores(result, graded=self.grader is not None)

    # The three stages' decisions, shared by run() and arun().

    def _after_rerank(
        self, drafts: list[_Draft], ranked: list[RankedText] | None, dropped: list[DroppedText]
    ) -> list[_Draft]:
        if ranked is None or self.reranker is None:
            return drafts
        for draft, result in zip(drafts, ranked, strict=True):
            draft.ranked = result
        threshold = self.reranker.score_threshold
        selected_indices = select_top(
            [r.score for r in ranked], top_n=self.reranker.top_n, min_score=threshold
        )
        chosen = set(selected_indices)
        for draft in drafts:
            if draft.index not in chosen:
                assert draft.ranked is not None
                below = threshold is not None and draft.ranked.score < threshold
                dropped.append(draft.dropped("below_score_threshold" if below else "below_top_n"))
        by_index = {d.index: d for d in drafts}
        return [by_index[i] for i in selected_indices]

    @staticmethod
    def _after_grade(
        drafts: list[_Draft], grades: list[Grade] | None, dropped: list[DroppedText]
    ) -> list[_Draft]:
        if grades is None:
            return drafts
        kept = []
        for draft, grade in zip(drafts, grades, strict=True):
            draft.grade = replace(grade, index=draft.index)
            if grade.relevant:
                kept.append(draft)
            else:
                dropped.append(draft.dropped("not_relevant"))
        return kept

    def _finish(
        self,
        drafts: list[_Draft],
        highlights: list[Highlight] | None,
        dropped: list[DroppedText],
    ) -> PipelineResult:
        kept = []
        for position, draft in enumerate(drafts):
            output_text = draft.text
            if highlights is not None:
                highlight = replace(highlights[position], index=draft.index)
                draft.highlight = highlight
                if highlight.spans:
                    output_text = highlight.trimmed_text
                elif self.on_no_evidence == "drop":
                    dropped.append(draft.dropped("no_evidence"))
                    continue
            kept.append(
                ProcessedText(
                    index=draft.index,
                    text=draft.text,
                    output_text=output_text,
                    ranked=draft.ranked,
                    grade=draft.grade,
                    highlight=draft.highlight,
                )
            )
        result = PipelineResult(
            kept=tuple(kept), dropped=tuple(sorted(dropped, key=lambda d: d.index))
        )
        action = self._action(result)
        return result if action is None else replace(result, action=action)

    @staticmethod
    def _inputs(
        query: str, texts: Sequence[str], scored_texts: Sequence[str] | None
    ) -> tuple[str, list[str], list[_Draft]]:
        query, items = check_query(query), check_texts(texts)
        scored = items if scored_texts is None else check_texts(scored_texts)
        if len(scored) != len(items):
            raise ValueError(
                f"scored_texts has {len(scored)} texts for {len(items)} texts; give one each"
            )
        return query, scored, [_Draft(index=i, text=t) for i, t in enumerate(items)]

    def run(
        self, query: str, texts: Sequence[str], *, scored_texts: Sequence[str] | None = None
    ) -> PipelineResult:
        """Run the configured stages over ``texts``; see the class docstring.

        Args:
            query: The query the texts were retrieved for.
            texts: The texts; the highlighter reads these and spans point into them.
            scored_texts: What the reranker and the grader read instead, one per text
                (e.g. a LlamaIndex node's text with its embedding metadata); ``None``:
                ``texts`` themselves.
        """
        query, scored, drafts = self._inputs(query, texts, scored_texts)
        dropped: list[DroppedText] = []
        if self.reranker is not None and drafts:
            ranked = self.reranker.score_texts(query, scored)
            drafts = self._after_rerank(drafts, ranked, dropped)
        if self.grader is not None and drafts:
            grades = self.grader.grade(query, [scored[d.index] for d in drafts])
            drafts = self._after_grade(drafts, grades, dropped)
        highlights = None
        if self.highlighter is not None and drafts:
            highlights = self.highlighter.highlight(query, [d.text for d in drafts])
        return self._finish(drafts, highlights, dropped)

    async def arun(
        self, query: str, texts: Sequence[str], *, scored_texts: Sequence[str] | None = None
    ) -> PipelineResult:
        """Async :meth:`run`."""
        query, scored, drafts = self._inputs(query, texts, scored_texts)
        dropped: list[DroppedText] = []
        if self.reranker is not None and drafts:
            ranked = await self.reranker.ascore_texts(query, scored)
            drafts = self._after_rerank(drafts, ranked, dropped)
        if self.grader is not None and drafts:
            grades = await self.grader.agrade(query, [scored[d.index] for d in drafts])
            drafts = self._after_grade(drafts, grades, dropped)
        highlights = None
        if self.highlighter is not None and drafts:
            highlights = await self.highlighter.ahighlight(query, [d.text for d in drafts])
        return self._finish(drafts, highlights, dropped)


def action_scores(result: PipelineResult, *, graded: bool | None = None) -> list[float]:
    """The relevance probabilities a CRAG action should be decided on, for one pipeline run.

    In input order. When a grader ran: the grade probability of every text it graded (kept
    or dropped). Otherwise, when a reranker ran: the reranker probability (sigmoid of the
    logit) of every text, since the reranker scores all texts before its cut. With neither,
    an empty list (and :func:`crag_integrations.crag.decide_action` then says
    ``"incorrect"``).

    Args:
        result: The pipeline's result.
        graded: Whether the pipeline has a grader. ``None`` infers it from the result, which
            cannot tell a grader that saw no text (the reranker dropped them all) from no
            grader: the pipeline passes it, so that such a run decides on no grade (hence
            ``"incorrect"``) rather than on the other model's probabilities.

    Example:
        >>> action_scores(PipelineResult(kept=()))
        []
    """
    items: list[ProcessedText | DroppedText] = [*result.kept, *result.dropped]
    items.sort(key=lambda item: item.index)  # input order, whatever order the stages kept
    grades = [item.grade.probability for item in items if item.grade is not None]
    if grades or graded:
        return grades
    return [item.ranked.probability for item in items if item.ranked is not None]
