"""Every decision, as pure functions over plain Python values.

Nothing here imports torch or touches a model: the roles call these functions on what the
engine returned, and the tests check them with exact cases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

from crag_integrations.errors import IncompatibleModelError
from crag_integrations.types import Span, TokenScores

__all__ = [
    "HIGHLIGHT_SENTENCE_PATTERN",
    "OSMOSIS_LABELS",
    "OSMOSIS_RELEVANT_LABELS",
    "TokenWindow",
    "WindowPooling",
    "best_window",
    "character_scores",
    "evidence_label_mask",
    "evidence_probabilities",
    "evidence_runs",
    "evidence_windows",
    "extract_spans",
    "extract_window_spans",
    "highlight_sentence_ranges",
    "join_spans",
    "merge_runs",
    "relevance_probability",
    "relevant_label_mask",
    "select_top",
    "sentence_ranges",
    "sentence_scores",
    "sigmoid",
    "softmax",
    "window_sentence_scores",
]

#: The five response-sufficiency labels of ``KingTechnician/osmosis-crossencoder-joint``.
OSMOSIS_LABELS = ("ADDR_DIRECT", "ADDR_PARTIAL", "NOADDR_ON", "NOADDR_TANGENTIAL", "NOADDR_OFF")
#: The OSMoSIS labels that count as relevant: the response addresses the objective.
OSMOSIS_RELEVANT_LABELS = ("ADDR_DIRECT", "ADDR_PARTIAL")

_POSITIVE_NAMES = frozenset({"relevant", "positive", "pos", "yes", "true", "entailment"})
_NEGATIVE_NAMES = frozenset(
    {"not_relevant", "irrelevant", "not relevant", "negative", "neg", "no", "false"}
)
_OUTSIDE_NAMES = frozenset({"o", "outside", "other", "none", "not_evidence", "0"})


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def softmax(logits: Sequence[float]) -> list[float]:
    """Numerically stable softmax of a logit vector."""
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [v / total for v in exps]


def select_top(
    scores: Sequence[float], *, top_n: int | None = None, min_score: float | None = None
) -> list[int]:
    """Indices of ``scores`` sorted best first, filtered by ``min_score``, then cut to ``top_n``.

    Ties keep input order (a stable sort), so equal scores never reorder documents.

    Example:
        >>> select_top([0.1, 0.9, 0.5], top_n=2)
        [1, 2]
        >>> select_top([0.1, 0.9, 0.5], min_score=0.4, top_n=5)
        [1, 2]
    """
    if top_n is not None and top_n < 0:
        raise ValueError(f"top_n must be >= 0 or None, not {top_n}")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    if min_score is not None:
        order = [i for i in order if scores[i] >= min_score]
    return order if top_n is None else order[:top_n]


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def relevant_label_mask(
    id2label: Sequence[str], relevant_labels: Sequence[str] | None = None
) -> tuple[bool, ...]:
    """Which labels of a classification head count as relevant.

    Rules, in order:

    1. ``relevant_labels`` given: exactly those names (each must exist in ``id2label``).
    2. Two labels: the one named like a positive class (``relevant``, ``positive``,
       ``yes``, ``true``, ``entailment``), else the other one of a label named like a
       negative class (``not_relevant``, ``irrelevant``, ``negative``, ``no``, ``false``),
       else index 1 (the convention of binary classifiers such as CRAG-ModernBert).
    3. The five OSMoSIS sufficiency labels: ``ADDR_DIRECT`` and ``ADDR_PARTIAL``.
    4. Anything else: an error asking for ``relevant_labels``.

    One-label heads have no label policy: they are graded through a sigmoid.

    Example:
        >>> relevant_label_mask(["not_relevant", "relevant"])
        (False, True)
        >>> relevant_label_mask(["LABEL_0", "LABEL_1"])
        (False, True)
    """
    names = list(id2label)
    if relevant_labels is not None:
        wanted = list(relevant_labels)
        unknown = [name for name in wanted if name not in names]
        if unknown or not wanted:
            raise ValueError(
                f"relevant_labels {wanted} must be a non-empty subset of the model's labels {names}"
            )
        return tuple(name in wanted for name in names)
    if len(names) == 2:
        normalised = [_normalise(n) for n in names]
        positives = [i for i, n in enumerate(normalised) if n in _POSITIVE_NAMES]
        negatives = [i for i, n in enumerate(normalised) if n in _NEGATIVE_NAMES]
        if len(positives) == 1:
            positive = positives[0]
        elif len(negatives) == 1:
            positive = 1 - negatives[0]
        else:
            positive = 1
        return tuple(i == positive for i in range(2))
    if set(names) == set(OSMOSIS_LABELS):
        return tuple(name in OSMOSIS_RELEVANT_LABELS for name in names)
    raise IncompatibleModelError(
        f"cannot tell which of the labels {names} mean 'relevant'; pass "
        "relevant_labels=[...] naming them"
    )


def relevance_probability(logits: Sequence[float], mask: Sequence[bool] | None) -> float:
    """Probability of relevance: sigmoid for one logit, else summed softmax over ``mask``."""
    if len(logits) == 1:
        return sigmoid(logits[0])
    if mask is None or len(mask) != len(logits):
        raise ValueError("a multi-label head needs a relevant-label mask of the same length")
    probabilities = softmax(logits)
    return sum(p for p, relevant in zip(probabilities, mask, strict=True) if relevant)


def best_window(
    window_logits: Sequence[Sequence[float]], mask: Sequence[bool] | None = None
) -> int:
    """Index of the window that decides a long text's score: the most relevant one.

    For one-logit heads that is the window with the highest logit (so the text's score is
    the max over windows); for classifiers, the window with the highest relevance
    probability. A text is as relevant as its most relevant part.
    """
    if not window_logits:
        raise ValueError("no windows to choose from")
    values = [relevance_probability(w, mask) for w in window_logits]
    if len(window_logits[0]) == 1:
        values = [w[0] for w in window_logits]
    return max(range(len(values)), key=lambda i: values[i])


def evidence_label_mask(
    id2label: Sequence[str], evidence_labels: Sequence[str] | None = None
) -> tuple[bool, ...]:
    """Which labels of a token-classification head mark evidence.

    A token's evidence probability is the summed probability of these labels.
    ``KRLabsOrg/acl-verbatim-modernbert``'s ``.process()`` sums every label but label 0
    (its ``O``); these rules give exactly that for every head whose label 0 is the outside
    label, and read the names where they say otherwise. Rules, in order:

    1. ``evidence_labels`` given: exactly those.
    2. One label named like "outside" (``O``, ``outside``, ``other``, ``none``): every
       other label (for a BIO scheme, ``B-*`` plus ``I-*``), wherever it sits.
    3. Unnamed labels (``LABEL_0``, ``LABEL_1``, ... in order) or any two-label head:
       every label but label 0, as the reference does.
    4. Anything else: an error asking for ``evidence_labels``.

    Example:
        >>> evidence_label_mask(["O", "EVIDENCE"])
        (False, True)
        >>> evidence_label_mask(["O", "B-EV", "I-EV"])
        (False, True, True)
    """
    names = list(id2label)
    if evidence_labels is not None:
        wanted = list(evidence_labels)
        unknown = [name for name in wanted if name not in names]
        if unknown or not wanted:
            raise ValueError(
                f"evidence_labels {wanted} must be a non-empty subset of the model's token "
                f"labels {names}"
            )
        return tuple(name in wanted for name in names)
    outside = [i for i, n in enumerate(names) if _normalise(n) in _OUTSIDE_NAMES]
    if len(outside) == 1 and len(names) >= 2:
        return tuple(i != outside[0] for i in range(len(names)))
    generic = all(_normalise(name) == f"label_{i}" for i, name in enumerate(names))
    if len(names) == 2 or (generic and len(names) > 2):
        return tuple(i != 0 for i in range(len(names)))
    raise IncompatibleModelError(
        f"cannot tell which of the token labels {names} mark evidence; pass "
        "evidence_labels=[...] naming them"
    )


def evidence_probabilities(
    distributions: Sequence[Sequence[float]], mask: Sequence[bool]
) -> list[float]:
    """Each token's evidence probability: the summed probability of its evidence labels.

    Example:
        >>> evidence_probabilities([(0.7, 0.2, 0.1)], (False, True, True))
        [0.30000000000000004]
    """
    return [
        sum(p for p, is_evidence in zip(dist, mask, strict=True) if is_evidence)
        for dist in distributions
    ]


#: One window's reading of a text: its tokens' character offsets and evidence probabilities.
TokenWindow = tuple[Sequence[tuple[int, int]], Sequence[float]]

#: How a highlighter reads a text longer than one window. ``"max"``: every window on its
#: own, as acl-verbatim's ``.process()`` does (spans and character scores take the maximum
#: over windows). ``"mean"``: the probabilities of overlapping windows averaged into one
#: token sequence first.
WindowPooling = Literal["max", "mean"]


def evidence_windows(
    scores: TokenScores, mask: Sequence[bool], *, pooling: WindowPooling = "max"
) -> list[TokenWindow]:
    """The token windows the span and sentence rules read, with evidence probabilities.

    Args:
        scores: The engine's token probabilities of one text.
        mask: Which labels mark evidence (:func:`evidence_label_mask`).
        pooling: ``"max"``: one window per window the engine read, each with its own
            probabilities; ``"mean"``: one window over the whole text holding the
            probabilities averaged over overlapping windows.

    Returns:
        ``(offsets, evidence probabilities)`` per window, in text order.
    """
    if pooling == "mean":
        return [(scores.offsets, evidence_probabilities(scores.probabilities, mask))]
    if pooling != "max":
        raise ValueError(f"pooling must be 'max' or 'mean', not {pooling!r}")
    return [
        (scores.offsets[first:stop], evidence_probabilities(probabilities, mask))
        for (first, stop), probabilities in zip(
            scores.window_ranges, scores.window_probabilities, strict=True
        )
    ]


def _check_span_settings(threshold: float, min_span_chars: int, merge_gap_chars: int) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], not {threshold}")
    if min_span_chars < 0 or merge_gap_chars < 0:
        raise ValueError("min_span_chars and merge_gap_chars must be >= 0")


def evidence_runs(
    offsets: Sequence[tuple[int, int]], probabilities: Sequence[float], *, threshold: float
) -> list[tuple[int, int, float]]:
    """The raw spans of one window: runs of consecutive evidence tokens.

    A token is evidence when it covers characters and its probability is at least
    ``threshold``; any other token (below threshold, or without characters) ends a run.
    A run spans from its first token's start to its last token's end and is scored by
    the largest probability in it.

    Example:
        >>> evidence_runs([(0, 4), (5, 9), (10, 14)], [0.5, 0.9, 0.1], threshold=0.2)
        [(0, 9, 0.9)]
    """
    if len(offsets) != len(probabilities):
        raise ValueError("offsets and probabilities must have the same length")
    runs: list[tuple[int, int, float]] = []
    run: tuple[int, int, float] | None = None
    for (start, end), probability in zip(offsets, probabilities, strict=True):
        if end > start and probability >= threshold:
            run = (
                (start, end, probability)
                if run is None
                else (
                    run[0],
                    end,
                    max(run[2], probability),
                )
            )
        elif run is not None:
            runs.append(run)
            run = None
    if run is not None:
        runs.append(run)
    return runs


def merge_runs(
    runs: Sequence[tuple[int, int, float]], *, min_span_chars: int, merge_gap_chars: int
) -> list[tuple[int, int, float]]:
    """Pool raw spans (of any windows), merge those close together, drop short ones.

    Spans are sorted; a span joins the previous merged span when its start minus that
    span's end is at most ``merge_gap_chars`` (the end becomes the larger end, the score
    the larger score). Merged spans shorter than ``min_span_chars`` are dropped.

    Example:
        >>> merge_runs([(30, 40, 0.5), (0, 10, 0.9), (12, 20, 0.3)],
        ...            min_span_chars=10, merge_gap_chars=5)
        [(0, 20, 0.9), (30, 40, 0.5)]
    """
    merged: list[tuple[int, int, float]] = []
    for start, end, score in sorted(runs):
        if merged and start - merged[-1][1] <= merge_gap_chars:
            first, last, best = merged[-1]
            merged[-1] = (first, max(last, end), max(best, score))
        else:
            merged.append((start, end, score))
    return [run for run in merged if run[1] - run[0] >= min_span_chars]


def extract_window_spans(
    text: str,
    windows: Sequence[TokenWindow],
    *,
    threshold: float = 0.2,
    min_span_chars: int = 10,
    merge_gap_chars: int = 20,
) -> list[Span]:
    """Evidence spans of ``text`` read in windows: acl-verbatim's ``.process()`` rules.

    Each window on its own yields raw spans (:func:`evidence_runs`); the raw spans of all
    windows are pooled as they are, then merged and filtered (:func:`merge_runs`).
    ``span.text == text[span.start:span.end]`` always holds.

    Args:
        text: The text the offsets point into.
        windows: ``(offsets, evidence probabilities)`` per window.
        threshold: Probability from which a token is evidence (inclusive).
        min_span_chars: Drop merged spans shorter than this many characters.
        merge_gap_chars: Merge spans separated by at most this many characters.

    Returns:
        The spans in text order, each scored by the largest probability in it.
    """
    _check_span_settings(threshold, min_span_chars, merge_gap_chars)
    runs = [
        run
        for offsets, probabilities in windows
        for run in evidence_runs(offsets, probabilities, threshold=threshold)
    ]
    return [
        Span(start=start, end=end, text=text[start:end], score=score)
        for start, end, score in merge_runs(
            runs, min_span_chars=min_span_chars, merge_gap_chars=merge_gap_chars
        )
    ]


def extract_spans(
    text: str,
    offsets: Sequence[tuple[int, int]],
    probabilities: Sequence[float],
    *,
    threshold: float = 0.2,
    min_span_chars: int = 10,
    merge_gap_chars: int = 20,
) -> list[Span]:
    """Evidence spans of ``text`` from one token sequence (one window, or pooled ones).

    :func:`extract_window_spans` with a single window: tokens whose probability is at
    least ``threshold`` are evidence; consecutive evidence tokens form a span from the
    first token's start to the last token's end, scored by their largest probability;
    spans whose gap is at most ``merge_gap_chars`` characters merge (the gap becomes
    part of the span); spans shorter than ``min_span_chars`` characters after merging
    are dropped. ``span.text == text[span.start:span.end]`` always holds.

    Example:
        >>> extract_spans("aaaa bbbb cccc", [(0, 4), (5, 9), (10, 14)], [0.9, 0.1, 0.8],
        ...               min_span_chars=1, merge_gap_chars=0)
        ... # doctest: +NORMALIZE_WHITESPACE
        [Span(start=0, end=4, text='aaaa', score=0.9),
         Span(start=10, end=14, text='cccc', score=0.8)]
    """
    return extract_window_spans(
        text,
        [(offsets, probabilities)],
        threshold=threshold,
        min_span_chars=min_span_chars,
        merge_gap_chars=merge_gap_chars,
    )


def character_scores(
    length: int, windows: Sequence[TokenWindow], *, threshold: float
) -> list[float]:
    """Each character's evidence score: the largest probability of an evidence token on it.

    Evidence tokens are those with probability at least ``threshold``, in any window;
    characters no evidence token covers score 0.

    Example:
        >>> character_scores(5, [([(0, 2), (2, 4)], [0.5, 0.1])], threshold=0.2)
        [0.5, 0.5, 0.0, 0.0, 0.0]
    """
    scores = [0.0] * length
    for offsets, probabilities in windows:
        for (start, end), probability in zip(offsets, probabilities, strict=True):
            if probability >= threshold:
                for position in range(start, min(end, length)):
                    if probability > scores[position]:
                        scores[position] = probability
    return scores


def _trim_whitespace(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


# ASCII terminators need following whitespace; CJK full stop, fullwidth ! and ? do not.
_SENTENCE_END = re.compile("(?<=[.!?\u3002\uff01\uff1f])\\s+|(?<=[\u3002\uff01\uff1f])|\n\\s*\n")


def sentence_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges of the sentences of ``text`` (whitespace-trimmed, non-empty).

    Sentences end at ``.``, ``!`` or ``?`` followed by whitespace, at CJK full stops, and
    at blank lines. Abbreviations may split a sentence; scores stay per-token exact.
    """
    ranges: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        ranges.append((start, match.start()))
        start = match.end()
    ranges.append((start, len(text)))
    trimmed = [_trim_whitespace(text, a, b) for a, b in ranges]
    return [(a, b) for a, b in trimmed if b > a]


#: acl-verbatim's sentence splitter for per-sentence evidence scores (dot matches newlines).
HIGHLIGHT_SENTENCE_PATTERN = re.compile(r".+?(?:[.!?]+(?:\s+|$)|\n{2,}|$)", re.DOTALL)


def highlight_sentence_ranges(text: str) -> list[tuple[int, int]]:
    """Character ranges of the sentences a highlighter scores, as acl-verbatim splits them.

    Sentences are the matches of :data:`HIGHLIGHT_SENTENCE_PATTERN` (up to a run of ``.``,
    ``!`` or ``?`` followed by whitespace or the end, a blank line, or the end), each
    stripped of surrounding whitespace; blank ones are skipped. Unlike
    :func:`sentence_ranges` (the CRAG strips' and gold sentences' splitter) it does not
    split at CJK full stops: the highlighter's sentences are the reference's.

    Example:
        >>> text = "One. Two!\\n\\nThree 東京です。四"
        >>> [text[a:b] for a, b in highlight_sentence_ranges(text)]
        ['One.', 'Two!', 'Three 東京です。四']
    """
    ranges: list[tuple[int, int]] = []
    for match in HIGHLIGHT_SENTENCE_PATTERN.finditer(text):
        sentence = match.group()
        stripped = sentence.strip()
        if stripped:
            start = match.start() + len(sentence) - len(sentence.lstrip())
            ranges.append((start, start + len(stripped)))
    return ranges


def window_sentence_scores(
    text: str, windows: Sequence[TokenWindow], *, threshold: float = 0.2
) -> list[Span]:
    """Each sentence of ``text`` with its mean character evidence score.

    A character scores the largest probability of the evidence tokens (probability at
    least ``threshold``, any window) covering it, 0 if none (:func:`character_scores`);
    a sentence (:func:`highlight_sentence_ranges`) scores the sum of its characters'
    scores divided by its length, as acl-verbatim's ``.process()`` computes it.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], not {threshold}")
    scores = character_scores(len(text), windows, threshold=threshold)
    return [
        Span(
            start=start, end=end, text=text[start:end], score=sum(scores[start:end]) / (end - start)
        )
        for start, end in highlight_sentence_ranges(text)
    ]


def sentence_scores(
    text: str,
    offsets: Sequence[tuple[int, int]],
    probabilities: Sequence[float],
    *,
    threshold: float = 0.2,
) -> list[Span]:
    """:func:`window_sentence_scores` of one token sequence (one window, or pooled ones).

    Example:
        >>> [round(s.score, 2) for s in sentence_scores(
        ...     "Rain falls. Sun.", [(0, 4), (5, 11), (12, 16)], [0.9, 0.1, 0.4])]
        [0.33, 0.4]
    """
    if len(offsets) != len(probabilities):
        raise ValueError("offsets and probabilities must have the same length")
    return window_sentence_scores(text, [(offsets, probabilities)], threshold=threshold)


def join_spans(spans: Sequence[Span], separator: str) -> str:
    """The spans' texts in text order, joined by ``separator``."""
    return separator.join(span.text for span in sorted(spans, key=lambda s: s.start))
