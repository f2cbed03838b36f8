"""EvidenceHighlighter returns what acl-verbatim-modernbert's ``.process()`` returns.

The reference below is written from the model card and issue 12's statement of its
semantics, independently of the package: the tokenizer windows (question, context) itself
(``truncation="only_second"``, ``return_overflowing_tokens``, offsets), one forward pass of
``AutoModelForTokenClassification`` reads every window, and the spans and sentence scores
are computed from those windows alone. The highlighter must give identical span bounds and
scores and sentence scores within 1e-6, on texts several windows long, for BERT, ModernBERT
and DeBERTa-v2 tiny checkpoints.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crag_integrations import EvidenceHighlighter
from crag_integrations.testing import TINY_TOKENIZER_CORPUS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ARCHITECTURES = ("bert", "modernbert", "deberta-v2")
QUESTION = "what causes rain?"
SENTENCE = re.compile(r".+?(?:[.!?]+(?:\s+|$)|\n{2,}|$)", re.DOTALL)
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Reference:
    """What ``.process()`` returns: spans and sentences as (start, end, text, score)."""

    spans: list[tuple[int, int, str, float]]
    sentences: list[tuple[int, int, str, float]]
    windows: int
    token_probabilities: list[float]


def reference_process(
    tokenizer: Any,
    model: Any,
    question: str,
    context: str,
    *,
    threshold: float = 0.2,
    max_length: int = 8192,
    doc_stride: int = 256,
    min_span_chars: int = 10,
    merge_gap_chars: int = 20,
) -> Reference:
    """acl-verbatim's ``.process(..., return_sentence_metrics=True)``, step by step."""
    limit = min(model.config.max_position_embeddings, tokenizer.model_max_length)
    encoding = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=min(max_length, limit),
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=True,
        return_tensors="pt",
    )
    inputs = {name: encoding[name] for name in tokenizer.model_input_names}
    with torch.no_grad():
        logits = model(**inputs).logits
    # Evidence probability: the softmax mass of every label other than label 0.
    evidence = torch.softmax(logits, dim=-1)[..., 1:].sum(dim=-1).tolist()
    offsets = encoding["offset_mapping"].tolist()

    raw: list[tuple[int, int, float]] = []
    char_scores = [0.0] * len(context)
    seen: list[float] = []
    for window in range(len(offsets)):
        sequence_ids = encoding.sequence_ids(window)
        run: list[Any] | None = None
        for position, sequence_id in enumerate(sequence_ids):
            start, end = offsets[window][position]
            probability = evidence[window][position]
            is_context = sequence_id == 1 and end > start
            if is_context:
                seen.append(probability)
            if is_context and probability >= threshold:
                for char in range(start, end):
                    char_scores[char] = max(char_scores[char], probability)
                if run is None:
                    run = [start, end, probability]
                else:
                    run[1] = end
                    run[2] = max(run[2], probability)
            elif run is not None:
                raw.append((run[0], run[1], run[2]))
                run = None
        if run is not None:
            raw.append((run[0], run[1], run[2]))

    merged: list[list[Any]] = []
    for start, end, score in sorted(raw):
        if merged and start - merged[-1][1] <= merge_gap_chars:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2] = max(merged[-1][2], score)
        else:
            merged.append([start, end, score])
    spans = [
        (start, end, context[start:end], score)
        for start, end, score in merged
        if end - start >= min_span_chars
    ]

    sentences = []
    for match in SENTENCE.finditer(context):
        text = match.group().strip()
        if not text:
            continue
        start = match.start() + match.group().index(text)
        end = start + len(text)
        sentences.append((start, end, text, sum(char_scores[start:end]) / len(text)))
    return Reference(spans, sentences, len(offsets), seen)


def long_texts(seed: int, count: int = 4) -> list[str]:
    """Texts several windows long: shuffled corpus sentences, paragraphs, Unicode."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        sentences = [rng.choice(TINY_TOKENIZER_CORPUS) for _ in range(rng.randint(12, 24))]
        pieces = []
        for sentence in sentences:
            pieces.append(sentence)
            pieces.append(rng.choice([" ", " ", " ", "\n\n", "  ", "\n"]))
        texts.append("".join(pieces).strip())
    return texts


@pytest.fixture(scope="module")
def references(checkpoints: dict[str, Path]) -> dict[str, tuple[Any, Any]]:
    """Tokenizer and model of each tiny token checkpoint, loaded directly."""
    loaded = {}
    for arch in ARCHITECTURES:
        path = checkpoints[f"{arch}-token"]
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForTokenClassification.from_pretrained(path).eval()
        loaded[arch] = (tokenizer, model)
    return loaded


def assert_same(got: Any, expected: Reference) -> None:
    """Identical span bounds and texts; span and sentence scores within 1e-6."""
    assert got.num_windows == expected.windows
    assert [(s.start, s.end, s.text) for s in got.spans] == [
        (start, end, text) for start, end, text, _ in expected.spans
    ]
    for span, (*_, score) in zip(got.spans, expected.spans, strict=True):
        assert span.score == pytest.approx(score, abs=TOLERANCE)
    assert got.sentences is not None
    assert [(s.start, s.end, s.text) for s in got.sentences] == [
        (start, end, text) for start, end, text, _ in expected.sentences
    ]
    for sentence, (*_, score) in zip(got.sentences, expected.sentences, strict=True):
        assert sentence.score == pytest.approx(score, abs=TOLERANCE)


# Window settings under which the engine's stride clamp (half the text room) does not bind.
WINDOWS = [(64, 16), (96, 40), (128, 0)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(("max_length", "doc_stride"), WINDOWS)
def test_multi_window_texts_match_the_reference(
    checkpoints: dict[str, Path],
    references: dict[str, tuple[Any, Any]],
    arch: str,
    max_length: int,
    doc_stride: int,
) -> None:
    """Spans and sentence scores equal .process()'s, at the default and a median threshold."""
    tokenizer, model = references[arch]
    texts = long_texts(seed=max_length + doc_stride)
    first = reference_process(
        tokenizer, model, QUESTION, texts[0], max_length=max_length, doc_stride=doc_stride
    )
    # A threshold in the middle of this model's probabilities fragments the evidence, so
    # run boundaries, merging and the length filter all come into play.
    median = sorted(first.token_probabilities)[len(first.token_probabilities) // 2]
    for threshold in (0.2, round(median, 3)):
        highlighter = EvidenceHighlighter(
            model=str(checkpoints[f"{arch}-token"]),
            threshold=threshold,
            max_length=max_length,
            doc_stride=doc_stride,
            return_sentence_scores=True,
        )
        # All texts in one call: batching with other texts' windows must not matter.
        results = highlighter.highlight(QUESTION, texts)
        for text, got in zip(texts, results, strict=True):
            expected = reference_process(
                tokenizer,
                model,
                QUESTION,
                text,
                threshold=threshold,
                max_length=max_length,
                doc_stride=doc_stride,
            )
            assert expected.windows > 2
            assert_same(got, expected)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_comparison_can_tell_averaged_windows_apart(
    checkpoints: dict[str, Path], references: dict[str, tuple[Any, Any]], arch: str
) -> None:
    """window_pooling='mean' differs from the reference somewhere: the check has teeth."""
    tokenizer, model = references[arch]
    texts = long_texts(seed=7, count=6)
    probabilities = reference_process(
        tokenizer, model, QUESTION, texts[0], max_length=64, doc_stride=24
    ).token_probabilities
    threshold = round(sorted(probabilities)[len(probabilities) // 2], 3)
    settings: dict[str, Any] = {
        "model": str(checkpoints[f"{arch}-token"]),
        "threshold": threshold,
        "max_length": 64,
        "doc_stride": 24,
        "min_span_chars": 1,
        "merge_gap_chars": 0,
        "return_sentence_scores": True,
    }
    exact = EvidenceHighlighter(**settings).highlight(QUESTION, texts)
    averaged = EvidenceHighlighter(**settings, window_pooling="mean").highlight(QUESTION, texts)
    for text, got in zip(texts, exact, strict=True):
        expected = reference_process(
            tokenizer,
            model,
            QUESTION,
            text,
            threshold=threshold,
            max_length=64,
            doc_stride=24,
            min_span_chars=1,
            merge_gap_chars=0,
        )
        assert_same(got, expected)
    assert exact != averaged


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_texts_within_one_window_match_with_default_settings(
    checkpoints: dict[str, Path], references: dict[str, tuple[Any, Any]], arch: str
) -> None:
    """With every setting left at its default, short texts match .process() too."""
    tokenizer, model = references[arch]
    texts = [*TINY_TOKENIZER_CORPUS[:6], " ".join(TINY_TOKENIZER_CORPUS)]
    highlighter = EvidenceHighlighter(
        model=str(checkpoints[f"{arch}-token"]), return_sentence_scores=True
    )
    for text, got in zip(texts, highlighter.highlight(QUESTION, texts), strict=True):
        assert_same(got, reference_process(tokenizer, model, QUESTION, text))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_multi_window_texts_match_with_default_settings(
    checkpoints: dict[str, Path], references: dict[str, tuple[Any, Any]], arch: str
) -> None:
    """Defaults (max_length capped at the model's 512, doc_stride 256) on long texts."""
    tokenizer, model = references[arch]
    texts = [" ".join(long_texts(seed=seed, count=6)) for seed in range(2)]
    highlighter = EvidenceHighlighter(
        model=str(checkpoints[f"{arch}-token"]), return_sentence_scores=True
    )
    for text, got in zip(texts, highlighter.highlight(QUESTION, texts), strict=True):
        expected = reference_process(tokenizer, model, QUESTION, text)
        assert expected.windows > 2
        assert_same(got, expected)
