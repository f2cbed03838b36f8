"""Exceptions raised by crag_integrations; each message says what to do instead."""

from __future__ import annotations

__all__ = ["DataError", "IncompatibleModelError", "ModelUnavailableError"]


class ModelUnavailableError(OSError):
    """A model could not be loaded from a local directory or the Hugging Face cache.

    Subclasses ``OSError`` because that is what ``transformers`` raises for the same
    situation, so existing ``except OSError`` handlers keep working.
    """


class IncompatibleModelError(ValueError):
    """A checkpoint's head does not fit the role that was asked to use it."""


class DataError(ValueError):
    """Rows given for training, evaluation or scoring cannot be used as they are: a missing
    or unreadable file, an unknown file type, a missing column, an invalid cell. The
    message names the file, row or column and what was expected."""
