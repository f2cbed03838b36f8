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

__all__ = ["check_query", "check_texts"]


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
