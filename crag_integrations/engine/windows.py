"""Tokenizing ``(query, text)`` pairs into overlapping windows: the one windowing of the package.

Inference (the engine) and training both window through :func:`encode_windows`, so a model
is trained on exactly the windows it later scores. When ``query + text + special tokens``
exceed ``max_length``, the fast tokenizer's overflow mechanism splits the text
(``truncation="only_second"``, ``return_overflowing_tokens=True``): every window repeats the
query, and consecutive windows share ``stride`` tokens of text: as asked while that is less
than the room the query leaves (as the tokenizer and the seed highlighter take it), else
half that room (:func:`clamp_stride`), so windows always advance.

Example:
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tokenizer = AutoTokenizer.from_pretrained("cross-encoder/ms-marco-MiniLM-L6-v2")
    ... # doctest: +SKIP
    >>> [windows] = encode_windows(
    ...     tokenizer, [("rain?", "Water vapour condenses. " * 40)], max_length=64, stride=16,
    ...     with_offsets=False, with_token_type_ids=True,
    ... )  # doctest: +SKIP
    >>> len(windows) > 1, all(len(w.input_ids) <= 64 for w in windows)  # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EncodedWindow", "clamp_stride", "count_query_tokens", "encode_windows"]


@dataclass(frozen=True, slots=True)
class EncodedWindow:
    """One window of one pair, as the model reads it (no padding).

    Attributes:
        input_ids: Token ids: special tokens, the query, a slice of the text.
        token_type_ids: Segment ids, or ``None`` when the model takes none.
        sequence_ids: Per token: ``0`` query, ``1`` text, ``None`` special token; only
            with ``with_offsets=True``.
        offsets: Per token: ``(start, end)`` character offsets into the query (sequence 0)
            or the text (sequence 1); ``(0, 0)`` for special tokens; only with
            ``with_offsets=True``.
    """

    input_ids: list[int]
    token_type_ids: list[int] | None
    sequence_ids: list[int | None] | None
    offsets: list[tuple[int, int]] | None


def count_query_tokens(tokenizer: Any, queries: Iterable[str]) -> dict[str, int]:
    """Tokens of each distinct query, special tokens excluded, in one tokenizer call."""
    distinct = sorted(set(queries))
    if not distinct:
        return {}
    # verbose=False: a query longer than the model's limit is reported by clamp_stride, not
    # by transformers' "Token indices sequence length is longer than ..." warning.
    ids = tokenizer(distinct, add_special_tokens=False, verbose=False)["input_ids"]
    return dict(zip(distinct, (len(row) for row in ids), strict=True))


def clamp_stride(stride: int, *, max_length: int, query_tokens: int, special_tokens: int) -> int:
    """The stride a pair is windowed with: as asked while windows still advance, else half
    the room its query leaves for text.

    Args:
        stride: The requested overlap between consecutive windows, in tokens.
        max_length: Tokens per window.
        query_tokens: Tokens of the query (without special tokens).
        special_tokens: Special tokens the tokenizer adds to a pair.

    Returns:
        ``stride`` when it is smaller than ``room`` (what the window has left for text), as
        the tokenizer and the seed highlighter's ``.process()`` take it; else ``room // 2``.

    Raises:
        ValueError: The query leaves no room for text within ``max_length``.
    """
    room = max_length - query_tokens - special_tokens
    if room < 1:
        raise ValueError(
            f"The query is {query_tokens} tokens long, which leaves no room "
            f"for the text within max_length={max_length}. Shorten the query or "
            "raise max_length."
        )
    # Windows must advance: a stride of the whole room (or more) would never move on, and
    # the tokenizer panics on it; below that, keep the caller's stride exactly.
    return stride if stride < room else room // 2


def encode_windows(
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    max_length: int,
    stride: int,
    with_offsets: bool,
    with_token_type_ids: bool,
    query_tokens: Mapping[str, int] | None = None,
) -> list[list[EncodedWindow] | ValueError]:
    """Each ``(query, text)`` pair as overlapping windows of at most ``max_length`` tokens.

    Windows come from the fast tokenizer (``truncation="only_second"``,
    ``return_overflowing_tokens=True``), with each pair's stride clamped by
    :func:`clamp_stride` so windows always advance. Pairs that share a clamped stride go
    through one batched tokenizer call; a pair's windows depend only on its own query,
    text, ``max_length`` and ``stride``, never on the other pairs.

    Args:
        tokenizer: A fast (Rust-backed) Hugging Face tokenizer.
        pairs: ``(query, text)`` string pairs.
        max_length: Tokens per window, special tokens included.
        stride: Requested overlap between consecutive windows, in tokens.
        with_offsets: Also return each token's sequence id and character offsets.
        with_token_type_ids: Also return segment ids (for models that take them).
        query_tokens: Token counts of the queries (from :func:`count_query_tokens`) when
            the caller has them already; counted here otherwise.

    Returns:
        Per pair, in input order: its windows in text order, or the ``ValueError`` that
        pair alone fails with when its query leaves no room for text.
    """
    if not pairs:
        return []
    counts = (
        query_tokens
        if query_tokens is not None
        else count_query_tokens(tokenizer, (query for query, _ in pairs))
    )
    special_tokens = int(tokenizer.num_special_tokens_to_add(pair=True))
    results: list[list[EncodedWindow] | ValueError] = []
    by_stride: dict[int, list[int]] = {}
    for index, (query, _text) in enumerate(pairs):
        try:
            clamped = clamp_stride(
                stride,
                max_length=max_length,
                query_tokens=counts[query],
                special_tokens=special_tokens,
            )
        except ValueError as exc:
            results.append(exc)
            continue
        results.append([])
        by_stride.setdefault(clamped, []).append(index)

    for clamped, members in by_stride.items():
        encoding = tokenizer(
            [pairs[index][0] for index in members],
            [pairs[index][1] for index in members],
            truncation="only_second",
            max_length=max_length,
            stride=clamped,
            return_overflowing_tokens=True,
            return_offsets_mapping=with_offsets,
            return_token_type_ids=with_token_type_ids,
            padding=False,
        )
        for row, sample in enumerate(encoding["overflow_to_sample_mapping"]):
            windows = results[members[sample]]
            assert not isinstance(windows, ValueError)
            windows.append(
                EncodedWindow(
                    input_ids=list(encoding["input_ids"][row]),
                    token_type_ids=(
                        list(encoding["token_type_ids"][row]) if with_token_type_ids else None
                    ),
                    # Lists of int tuples from the Rust tokenizer, one per row of an encoding
                    # that is dropped after this loop: taken as they are, not copied.
                    sequence_ids=encoding.sequence_ids(row) if with_offsets else None,
                    offsets=encoding["offset_mapping"][row] if with_offsets else None,
                )
            )
    return results
