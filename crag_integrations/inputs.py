"""Validation of what callers pass in: clear errors, never silent coercion.

Documented behaviour (tested):

- ``query`` must be a ``str`` (else ``TypeError``) with at least one non-space character
  (else ``ValueError``).
- ``texts`` must be a sequence of ``str`` (a bare ``str`` is rejected with ``TypeError``, it
  is almost always a forgotten ``[...]``). An element that is ``None`` or not a ``str``
  raises ``TypeError`` naming its index.
- An empty list returns an empty result without loading or calling a model.
- An empty or whitespace-only text is valid: it is scored by the model like any other
  string (models score it low), and it never contains evidence spans.
- A query or text that cannot be encoded as UTF-8 (a lone surrogate such as ``"\ud800"``,
  which is a valid Python ``str``) is rejected with ``ValueError`` naming it and the
  position of the first bad character; it is never replaced or dropped silently. Every
  other code point (NUL, controls, right-to-left marks, combining marks, emoji) is valid.
- A ``dict`` (whose keys would be scored) or a ``set`` (which has no order to keep) is
  rejected with ``TypeError`` saying what to pass instead.
- Settings are checked by type as well as by range when a role is built: a count
  (``top_n``, ``top_k``) is an ``int`` and not a ``bool``; a score or threshold is a real
  number, not a ``bool``, not a string and not NaN; label names are a sequence of ``str``,
  never a bare ``str`` (which would be split into characters).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Set
from numbers import Real
from typing import TypeVar

__all__ = [
    "check_count",
    "check_items",
    "check_labels",
    "check_number",
    "check_query",
    "check_texts",
    "unencodable",
]

T = TypeVar("T")


def check_query(query: object) -> str:
    """Return ``query`` if it is a non-blank string, else raise ``TypeError``/``ValueError``."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, not {type(query).__name__}")
    if not query.strip():
        raise ValueError("query is empty or whitespace-only; there is nothing to score against")
    _check_encodable("query", query)
    return query


def unencodable(value: str) -> str | None:
    """What makes ``value`` impossible to tokenize, or ``None`` when it is fine.

    A Python ``str`` may hold lone surrogates (``"\\ud800"``, e.g. from
    ``bytes.decode(errors="surrogateescape")`` or broken JSON escapes); they are not Unicode
    text, cannot be encoded as UTF-8, and the Rust tokenizer refuses them with a bare
    ``TypeError``. They are rejected before tokenizing rather than altering the caller's text.

    Example:
        >>> unencodable("rain") is None
        True
    """
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = value[exc.start]
        return (
            f"a lone surrogate {char!r} (U+{ord(char):04X}) at character {exc.start}, which is "
            "not valid Unicode and cannot be tokenized; remove or replace it before scoring "
            "(e.g. text.encode('utf-8', 'replace').decode('utf-8'))"
        )
    return None


def _check_encodable(name: str, text: str) -> None:
    problem = unencodable(text)
    if problem is not None:
        raise ValueError(f"{name} holds {problem}")


def check_texts(texts: object) -> list[str]:
    """Return ``texts`` as a new list of strings, or raise ``TypeError`` naming the culprit."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of str, not a single string; wrap it in [...]")
    if texts is None or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a sequence of str, not {type(texts).__name__}")
    if isinstance(texts, Mapping):
        raise TypeError(
            "texts must be a sequence of str, not a mapping (its keys would be scored); "
            "pass list(texts.values()) or list(texts) explicitly"
        )
    if isinstance(texts, Set):
        raise TypeError(
            "texts must be a sequence of str, not a set (it has no order to keep); "
            "pass sorted(texts) or a list"
        )
    result = list(texts)
    for index, text in enumerate(result):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, not {type(text).__name__}")
        _check_encodable(f"texts[{index}]", text)
    return result


def check_items(items: object, kind: type[T], name: str) -> list[T]:
    """Return ``items`` as a new list of ``kind`` instances (an adapter's documents or
    nodes), or raise ``TypeError`` saying what was expected and which element is wrong.

    Example:
        >>> check_items([1, 2], int, "numbers")
        [1, 2]
    """
    expected = f"{name} must be a list of {kind.__name__}"
    if isinstance(items, kind):
        raise TypeError(f"{expected}, not a single {kind.__name__}; wrap it in [...]")
    if isinstance(items, (str, bytes, dict)) or not isinstance(items, Iterable):
        raise TypeError(f"{expected}, not {type(items).__name__}")
    result = list(items)
    for index, item in enumerate(result):
        if not isinstance(item, kind):
            raise TypeError(f"{name}[{index}] must be a {kind.__name__}, not {type(item).__name__}")
    return result


def check_count(name: str, value: object, *, optional: bool = True) -> int | None:
    """Return ``value`` if it is a non-negative ``int`` (``None`` when ``optional``).

    Example:
        >>> check_count("top_n", 3)
        3
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 or None, not {value}")
    return value


def check_number(
    name: str,
    value: object,
    *,
    optional: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> float | None:
    """Return ``value`` as a float if it is a real, finite-or-infinite, non-NaN number within
    ``[low, high]`` (``None`` allowed when ``optional``); ``bool`` and ``str`` are refused.

    Example:
        >>> check_number("threshold", 0.5, low=0.0, high=1.0)
        0.5
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        kind = "a number or None" if optional else "a number"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} is NaN; give a number (NaN would silently fail every test)")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = (
            f"[{low}, {high}]"
            if low is not None and high is not None
            else (f">= {low}" if low is not None else f"<= {high}")
        )
        raise ValueError(f"{name} must be in {bounds}, not {number}")
    return number


def check_labels(name: str, value: object) -> tuple[str, ...] | None:
    """Return ``value`` as a tuple of label names, or ``None``; a bare ``str`` is refused.

    Example:
        >>> check_labels("relevant_labels", ["relevant"])
        ('relevant',)
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of label names, not one string; wrap it")
    if isinstance(value, (Mapping, Set)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence of label names, not {type(value).__name__}")
    labels = tuple(value)
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            raise TypeError(f"{name}[{index}] must be a str, not {type(label).__name__}")
    return labels
