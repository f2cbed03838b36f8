"""The scoring surface the roles use: :class:`ScoringBackend`, met by the local engine and by
remote engines.

A role (:mod:`crag_integrations.roles`) turns an engine's raw outputs into decisions: it
asks for the head, the window length, and the raw sequence logits or token probabilities of
``(query, text)`` pairs, and decides everything else (sorting, thresholds, spans, CRAG
actions) itself. Anything that answers those questions can stand in for the local
:class:`~crag_integrations.engine.CrossEncoderEngine`: give it to a role as ``model`` and
the role calls it directly. :class:`~crag_integrations.ray.remote.RemoteEngine` is one (a
served model over HTTP or a Ray Serve handle), so the same roles, pipeline, CRAG stages and
adapters run on a deployment with the same results.

Backends that can be described by plain data (a URL and a model name) register a *spec
kind*, so the adapters can write them to JSON and rebuild them (:func:`backend_from_spec`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from crag_integrations.config import EngineConfig, as_engine_config
from crag_integrations.types import ModelHead, SequenceScores, TokenScores

__all__ = [
    "SPEC_KEY",
    "ModelRef",
    "Pair",
    "ScoringBackend",
    "backend_from_spec",
    "check_model",
    "is_scoring_backend",
    "register_spec_kind",
]

#: One ``(query, text)`` pair.
Pair = tuple[str, str]

#: The key naming a backend's kind in its spec (``{"scoring_backend": "crag-http", ...}``);
#: not ``backend``, which an :class:`EngineConfig` dict has (torch or ONNX Runtime).
SPEC_KEY = "scoring_backend"


@runtime_checkable
class ScoringBackend(Protocol):
    """What a role needs from an engine: its head, window length, and raw scores.

    :class:`~crag_integrations.engine.CrossEncoderEngine` satisfies it, and so does
    :class:`~crag_integrations.ray.remote.RemoteEngine`. Outputs are in input order, one per
    pair, as plain values (:class:`~crag_integrations.types.SequenceScores`,
    :class:`~crag_integrations.types.TokenScores`); the async verbs await without blocking
    the event loop. Inputs are checked by the roles before they get here.

    On Python < 3.12, ``isinstance(obj, ScoringBackend)`` reads every member, and reading
    ``head`` loads a model (or asks a server); :func:`is_scoring_backend` checks the same
    members without reading them.
    """

    @property
    def config(self) -> EngineConfig:
        """The configuration of the engine that scores (for messages and event names)."""
        ...

    @property
    def head(self) -> ModelHead:
        """The model's head (may load the model or ask the server, once)."""
        ...

    @property
    def max_length(self) -> int:
        """Tokens per window when a call does not say (may load or ask, once)."""
        ...

    def load(self) -> ModelHead:
        """Make the model ready now and return its head."""
        ...

    async def aload(self) -> ModelHead:
        """Async :meth:`load`."""
        ...

    def score_pairs(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[SequenceScores]:
        """Raw sequence-head logits of every window of each pair."""
        ...

    async def ascore_pairs(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[SequenceScores]:
        """Async :meth:`score_pairs`."""
        ...

    def token_scores(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[TokenScores]:
        """Per-token label probabilities of each pair's text, window by window."""
        ...

    async def atoken_scores(
        self,
        pairs: Sequence[Pair],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[TokenScores]:
        """Async :meth:`token_scores`."""
        ...


_MEMBERS = (
    "config",
    "head",
    "max_length",
    "load",
    "aload",
    "score_pairs",
    "ascore_pairs",
    "token_scores",
    "atoken_scores",
)


def is_scoring_backend(value: object) -> bool:
    """Whether ``value`` has every :class:`ScoringBackend` member, without reading any.

    Strings and :class:`EngineConfig` are model *names*, not backends.

    Example:
        >>> is_scoring_backend("cross-encoder/ms-marco-MiniLM-L6-v2")
        False
    """
    if isinstance(value, (str, EngineConfig, Mapping, type)):
        return False
    missing = object()
    return all(inspect.getattr_static(value, name, missing) is not missing for name in _MEMBERS)


#: What a role's ``model`` may be: a hub id or path, an :class:`EngineConfig` (both run on
#: the process-wide local engine), or a :class:`ScoringBackend` (used as it is).
ModelRef = str | EngineConfig | ScoringBackend


def check_model(model: object) -> None:
    """Raise ``TypeError`` unless ``model`` is a :data:`ModelRef` (nothing is loaded).

    Example:
        >>> check_model(3)
        Traceback (most recent call last):
        ...
        TypeError: model must be a hub id, a local path, an EngineConfig or a ScoringBackend, not 3
    """
    if isinstance(model, str | EngineConfig):
        as_engine_config(model)
    elif not is_scoring_backend(model):
        raise TypeError(
            "model must be a hub id, a local path, an EngineConfig or a ScoringBackend, "
            f"not {model!r}"
        )


_SPEC_KINDS: dict[str, Callable[..., ScoringBackend]] = {}


def register_spec_kind(kind: str, factory: Callable[..., ScoringBackend]) -> None:
    """Let :func:`backend_from_spec` rebuild backends of ``kind`` with ``factory(**fields)``."""
    _SPEC_KINDS[kind] = factory


def backend_from_spec(spec: Mapping[str, Any]) -> ScoringBackend:
    """Rebuild a backend from the spec it wrote (its ``to_spec()``).

    A spec names its kind under ``"scoring_backend"`` and the module that provides it under
    ``"module"``; a module of this package is imported when its kind is not registered yet
    (no other module is ever imported from data).

    Raises:
        ValueError: No kind, or a kind nobody registered.
    """
    kind = spec.get(SPEC_KEY)
    if not isinstance(kind, str):
        raise ValueError(f"a backend spec names its kind under {SPEC_KEY!r}; got {dict(spec)!r}")
    module = spec.get("module")
    if (
        kind not in _SPEC_KINDS
        and isinstance(module, str)
        and module.startswith("crag_integrations.")
    ):
        importlib.import_module(module)
    factory = _SPEC_KINDS.get(kind)
    if factory is None:
        raise ValueError(
            f"unknown scoring backend kind {kind!r}; import the module that provides it "
            f"({module or 'unknown'}) before rebuilding it"
        )
    return factory(**{k: v for k, v in spec.items() if k not in (SPEC_KEY, "module")})
