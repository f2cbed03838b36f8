"""The process-wide registry: one engine per configuration, one loaded model per set of weights.

Equal :class:`~crag_integrations.config.EngineConfig` values get the same
:class:`~crag_integrations.engine.CrossEncoderEngine`; configurations that differ only in
windowing, batching or cache settings share one
:class:`~crag_integrations.engine.runner.ModelRunner` (one copy of the weights and one
score cache). :func:`release_engines` frees them all, and runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import threading
from dataclasses import replace
from typing import Any

from crag_integrations.config import EngineConfig
from crag_integrations.engine.cross_encoder_engine import CrossEncoderEngine
from crag_integrations.engine.devices import resolve_device, resolve_dtype
from crag_integrations.engine.loading import LoadKey
from crag_integrations.engine.runner import ModelRunner

__all__ = ["get_engine", "release_engines"]

_REGISTRY_LOCK = threading.Lock()
_ENGINES: dict[EngineConfig, CrossEncoderEngine] = {}
_RUNNERS: dict[LoadKey, ModelRunner] = {}


def get_engine(config: EngineConfig | str, **overrides: Any) -> CrossEncoderEngine:
    """Return the process-wide engine for ``config``; nothing is loaded until first use.

    Args:
        config: An :class:`EngineConfig`, or a model id/path (then ``overrides`` are the
            other ``EngineConfig`` fields).
        **overrides: ``EngineConfig`` fields to replace.

    Returns:
        The same :class:`CrossEncoderEngine` object for equal configurations. Engines whose
        configurations differ only in ``max_length``, ``stride``, ``token_budget``,
        ``max_wait_ms``, ``max_queue`` or ``cache_size`` share one loaded model (and its
        score cache).

    Example:
        >>> a = get_engine("cross-encoder/ms-marco-MiniLM-L6-v2", device="cpu")
        >>> b = get_engine(EngineConfig(model="cross-encoder/ms-marco-MiniLM-L6-v2", device="cpu"))
        >>> a is b
        True
    """
    if isinstance(config, str):
        config = EngineConfig(model=config, **overrides)
    elif overrides:
        config = replace(config, **overrides)
    with _REGISTRY_LOCK:
        engine = _ENGINES.get(config)
        if engine is not None:
            return engine
        device = resolve_device(config.device)
        key = LoadKey(
            model=config.model,
            revision=config.revision,
            device=device,
            dtype=resolve_dtype(config.dtype, device),
            trust_remote_code=config.trust_remote_code,
            local_files_only=config.local_files_only,
            cache_dir=config.cache_dir,
            compile=config.compile,
        )
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = _RUNNERS[key] = ModelRunner(key)
        engine = _ENGINES[config] = CrossEncoderEngine(config, runner)
        return engine


def release_engines() -> int:
    """Stop every engine's owner thread and free its weights; returns how many were freed.

    Engines obtained earlier raise a clear error if used again; call :func:`get_engine`
    for a fresh one (the roles and adapters do this for you on their next call).
    """
    with _REGISTRY_LOCK:
        runners = list(_RUNNERS.values())
        _RUNNERS.clear()
        _ENGINES.clear()
    loaded = 0
    for runner in runners:
        loaded += int(runner.is_loaded)
        runner.close()
    return loaded


atexit.register(release_engines)
