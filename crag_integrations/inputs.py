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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

__all__ = ["check_items", "check_query", "check_texts"]

T = TypeVar("T")


def check_query(query: object) -> str:
    """Return ``query`` if it is a non-blank string, else raise ``TypeError``/``ValueError``."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, not {type(query).__name__}")
    if not query.strip():
        raise ValueError("query is empty or whitespace-only; there is nothing to score against")
    return query


def check_texts(texts: object) -> list[str]:
    """Return ``texts`` as a new list of strings, or raise ``TypeError`` naming the culprit."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of str, not a single string; wrap it in [...]")
    if texts is None or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a sequence of str, not {type(texts).__name__}")
    result = list(texts)
    for index, text in enumerate(result):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, not {type(text).__name__}")
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
