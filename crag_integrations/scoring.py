"""Every decision, as pure functions over plain Python values.

Nothing here imports torch or touches a model: the roles call these functions on what the
engine returned, and the tests check them with exact cases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from crag_integrations.errors import IncompatibleModelError
from crag_integrations.types import Span

__all__ = [
    "OSMOSIS_LABELS",
    "OSMOSIS_RELEVANT_LABELS",
    "best_window",
    "evidence_label_mask",
    "evidence_probabilities",
    "extract_spans",
    "join_spans",
    "relevance_probability",
    "relevant_label_mask",
    "select_top",
    "sentence_ranges",
    "sentence_scores",
    "sigmoid",
    "softmax",
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

    A token's evidence probability is the summed probability of these labels. Rules:
    ``evidence_labels`` given: exactly those. Otherwise every label except the one named
    like "outside" (``O``, ``outside``, ``other``, ``none``): for a BIO scheme that is
    ``B-*`` plus ``I-*``. A two-label head with no such name uses index 1 as evidence, as
    ``KRLabsOrg/acl-verbatim-modernbert`` does (0 outside, 1 evidence).

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
    if len(names) == 2:
        return (False, True)
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


@dataclass
class _RawSpan:
    start: int
    end: int
    total: float
    tokens: int


def _trim_whitespace(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def extract_spans(
    text: str,
    offsets: Sequence[tuple[int, int]],
    probabilities: Sequence[float],
    *,
    threshold: float = 0.2,
    min_span_chars: int = 10,
    merge_gap_chars: int = 20,
) -> list[Span]:
    """Turn per-token evidence probabilities into character spans of ``text``.

    The semantics of ``acl-verbatim``'s ``.process()``: tokens whose probability is at
    least ``threshold`` are evidence; consecutive evidence tokens form a span; spans whose
    gap is at most ``merge_gap_chars`` characters are merged (the gap becomes part of the
    span); spans shorter than ``min_span_chars`` characters after merging are dropped.
    Edges are trimmed of whitespace. A span's score is the mean probability of its
    evidence tokens. ``span.text == text[span.start:span.end]`` always holds.

    Example:
        >>> extract_spans("aaaa bbbb cccc", [(0, 4), (5, 9), (10, 14)], [0.9, 0.1, 0.8],
        ...               min_span_chars=1, merge_gap_chars=0)
        ... # doctest: +NORMALIZE_WHITESPACE
        [Span(start=0, end=4, text='aaaa', score=0.9),
         Span(start=10, end=14, text='cccc', score=0.8)]
    """
    if len(offsets) != len(probabilities):
        raise ValueError("offsets and probabilities must have the same length")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], not {threshold}")
    if min_span_chars < 0 or merge_gap_chars < 0:
        raise ValueError("min_span_chars and merge_gap_chars must be >= 0")
    raw: list[_RawSpan] = []
    previous_was_evidence = False
    for (start, end), probability in zip(offsets, probabilities, strict=True):
        if end <= start:  # tokens without characters (e.g. special) carry no evidence
            continue
        if probability >= threshold:
            if previous_was_evidence and raw:
                span = raw[-1]
                span.end = max(span.end, end)
                span.total += probability
                span.tokens += 1
            else:
                raw.append(_RawSpan(start, end, probability, 1))
            previous_was_evidence = True
        else:
            previous_was_evidence = False

    merged: list[_RawSpan] = []
    for span in raw:
        if merged and span.start - merged[-1].end <= merge_gap_chars:
            last = merged[-1]
            last.end = max(last.end, span.end)
            last.total += span.total
            last.tokens += span.tokens
        else:
            merged.append(_RawSpan(span.start, span.end, span.total, span.tokens))

    spans: list[Span] = []
    for span in merged:
        start, end = _trim_whitespace(text, span.start, span.end)
        if end - start < max(min_span_chars, 1):
            continue
        spans.append(
            Span(start=start, end=end, text=text[start:end], score=span.total / span.tokens)
        )
    return spans


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


def sentence_scores(
    text: str, offsets: Sequence[tuple[int, int]], probabilities: Sequence[float]
) -> list[Span]:
    """Each sentence of ``text`` with the mean evidence probability of its tokens.

    A token belongs to the sentence it overlaps; sentences without tokens score 0.
    """
    result: list[Span] = []
    token = 0
    count = len(offsets)
    for start, end in sentence_ranges(text):
        while token < count and offsets[token][1] <= start:
            token += 1
        cursor = token
        values: list[float] = []
        while cursor < count and offsets[cursor][0] < end:
            if offsets[cursor][1] > offsets[cursor][0]:
                values.append(probabilities[cursor])
            cursor += 1
        score = sum(values) / len(values) if values else 0.0
        result.append(Span(start=start, end=end, text=text[start:end], score=score))
    return result


def join_spans(spans: Sequence[Span], separator: str) -> str:
    """The spans' texts in text order, joined by ``separator``."""
    return separator.join(span.text for span in sorted(spans, key=lambda s: s.start))
