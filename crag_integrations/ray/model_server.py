"""One engine, every role: the object a Serve replica (or a local HTTP app) hosts per model.

:class:`ModelServer` has no Ray import: Serve turns it into a deployment
(:mod:`crag_integrations.ray.serve`), and :class:`LocalBackend` runs it in-process behind
the same HTTP routes. Each verb builds its role from the request's options (roles are
frozen configs and cost nothing to build) and awaits the shared engine, so concurrent
requests to one replica are coalesced into shared forward passes by the engine itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from crag_integrations.config import EngineConfig
from crag_integrations.crag import CragEvaluation, CragEvaluator
from crag_integrations.roles import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.types import (
    Grade,
    Highlight,
    RankedText,
    SequenceScores,
    TokenScores,
)

__all__ = ["LocalBackend", "ModelServer", "UnknownModelError", "build_role"]

#: The verbs a :class:`ModelServer` answers, and the role each builds.
VERBS = ("rerank", "grade", "highlight", "evaluate")


class UnknownModelError(LookupError):
    """The request names a model the application does not serve."""


def _shared_engine(config: EngineConfig) -> Any:
    # Every role on one config shares one engine; a role's public ``engine`` property is
    # how layers above the roles reach it (to load early and to describe the model).
    return Reranker(model=config).engine


def _present(options: Mapping[str, Any]) -> dict[str, Any]:
    # Absent options keep the role's own defaults, so one place (the role) owns them.
    return {name: value for name, value in options.items() if value is not None}


def build_role(
    config: EngineConfig, verb: str, options: Mapping[str, Any]
) -> Reranker | RelevanceGrader | EvidenceHighlighter | CragEvaluator:
    """The role ``verb`` needs, with ``options`` (``None`` values mean "role default").

    Building validates the options without loading anything, so the HTTP layer calls it
    to reject a bad option with a 4xx before the request reaches a replica.

    Raises:
        ValueError: Unknown verb, or an option the role rejects.
        TypeError: An option the role does not take.
    """
    kwargs = _present(options)
    if verb == "rerank":
        return Reranker(model=config, **kwargs)
    if verb == "grade":
        return RelevanceGrader(model=config, **kwargs)
    if verb == "highlight":
        return EvidenceHighlighter(model=config, **kwargs)
    if verb == "evaluate":
        return CragEvaluator(model=config, **kwargs)
    raise ValueError(f"verb must be one of {', '.join(VERBS)}, not {verb!r}")


class ModelServer:
    """Every role over one shared engine, as async verbs returning the roles' result types.

    Args:
        config: The engine to host.
        name: The name requests use for it (the ``model`` field of the HTTP APIs).
        load: Load the weights now. A Serve replica does (``True``), so it reports ready
            only once it can answer and autoscaling never routes to a cold replica.

    Example:
        >>> server = ModelServer(EngineConfig(model="path/to/reranker"), name="rr", load=False)
        >>> ranked = await server.rerank("rain?", ["Rain is condensed vapour."])
        ... # doctest: +SKIP
    """

    def __init__(self, config: EngineConfig, *, name: str, load: bool = True) -> None:
        self.config = config
        self.name = name
        if load:
            _shared_engine(config).load()

    async def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        top_n: int | None = None,
        score_threshold: float | None = None,
    ) -> list[RankedText]:
        """Texts best first, thresholded and cut (see :meth:`Reranker.arank`)."""
        role = build_role(self.config, "rerank", {})
        assert isinstance(role, Reranker)
        return await role.arank(query, texts, top_n=top_n, score_threshold=score_threshold)

    async def score(self, query: str, texts: Sequence[str]) -> list[RankedText]:
        """Every text scored, in input order (see :meth:`Reranker.ascore_texts`)."""
        role = build_role(self.config, "rerank", {})
        assert isinstance(role, Reranker)
        return await role.ascore_texts(query, texts)

    async def grade(self, query: str, texts: Sequence[str], **options: Any) -> list[Grade]:
        """One grade per text, in input order; ``options`` are :class:`RelevanceGrader`'s."""
        role = build_role(self.config, "grade", options)
        assert isinstance(role, RelevanceGrader)
        return await role.agrade(query, texts)

    async def highlight(self, query: str, texts: Sequence[str], **options: Any) -> list[Highlight]:
        """One highlight per text; ``options`` are :class:`EvidenceHighlighter`'s."""
        role = build_role(self.config, "highlight", options)
        assert isinstance(role, EvidenceHighlighter)
        return await role.ahighlight(query, texts)

    async def evaluate(self, query: str, texts: Sequence[str], **options: Any) -> CragEvaluation:
        """The CRAG action for the texts; ``options`` are :class:`CragEvaluator`'s."""
        role = build_role(self.config, "evaluate", options)
        assert isinstance(role, CragEvaluator)
        return await role.aevaluate(query, texts)

    async def info(self) -> dict[str, Any]:
        """The hosted model: name, path or id, head kind, labels, window length, device."""
        engine = _shared_engine(self.config)
        head = await engine.aload()
        return {
            "name": self.name,
            "model": self.config.model,
            "head": head.kind,
            "labels": list(head.id2label),
            "max_length": engine.max_length,
            "device": engine.device,
        }

    async def describe(self) -> dict[str, Any]:
        """:meth:`info` and the hosted :class:`EngineConfig` as a dict (``config``): what a
        :class:`~crag_integrations.ray.remote.RemoteEngine` needs to stand in for it."""
        return {**await self.info(), "config": dataclasses.asdict(self.config)}

    async def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[SequenceScores]:
        """The engine's raw window logits for each pair (remote engines decide on them)."""
        engine = _shared_engine(self.config)
        clean = [(query, text) for query, text in pairs]
        scores: list[SequenceScores] = await engine.ascore_pairs(
            clean, max_length=max_length, stride=stride
        )
        return scores

    async def token_scores(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> list[TokenScores]:
        """The engine's per-token probabilities of each pair's text, window by window."""
        engine = _shared_engine(self.config)
        clean = [(query, text) for query, text in pairs]
        scores: list[TokenScores] = await engine.atoken_scores(
            clean, max_length=max_length, stride=stride
        )
        return scores

    def check_health(self) -> None:
        """Raise when the engine cannot answer (Serve calls this periodically)."""
        if not _shared_engine(self.config).is_loaded:
            raise RuntimeError(f"the engine for {self.name!r} is not loaded")


class LocalBackend:
    """The HTTP routes' backend without Ray: every model's server in this process.

    Args:
        configs: Model name -> engine config.

    Example:
        >>> backend = LocalBackend({"rr": EngineConfig(model="path/to/reranker")})
        >>> backend.model_names()
        ['rr']
    """

    def __init__(self, configs: Mapping[str, EngineConfig]) -> None:
        self._servers = {
            name: ModelServer(config, name=name, load=False) for name, config in configs.items()
        }

    def model_names(self) -> list[str]:
        """Served model names, in configuration order."""
        return list(self._servers)

    def engine_config(self, model: str) -> EngineConfig:
        """The engine config served as ``model``.

        Raises:
            UnknownModelError: No such model.
        """
        return self._server(model).config

    def _server(self, model: str) -> ModelServer:
        try:
            return self._servers[model]
        except KeyError:
            raise UnknownModelError(model) from None

    async def call(self, model: str, verb: str, /, *args: Any, **kwargs: Any) -> Any:
        """Await ``verb`` on ``model``'s server."""
        method = getattr(self._server(model), verb)
        return await method(*args, **kwargs)
