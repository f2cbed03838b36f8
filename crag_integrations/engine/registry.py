"""The process-wide registry: one engine per configuration, one loaded model per set of weights.

Equal :class:`~crag_integrations.config.EngineConfig` values get the same
:class:`~crag_integrations.engine.CrossEncoderEngine`; configurations that differ only in
windowing, batching or cache settings share one
:class:`~crag_integrations.engine.runner.ModelRunner` (one copy of the weights and one
score cache). :func:`release_engines` frees them all, and runs at interpreter exit.

Getting an engine is cheap and safe on an event loop: an engine seen before is a dict
lookup without a lock; a new one is created under the registry lock without importing
torch. The device is resolved (torch imported) and the runner bound on the engine's first
use, which the async verbs run in a worker thread.

After ``os.fork()`` the child starts with an empty set of runners (its parent's owner
threads do not exist there): every engine, including those obtained before the fork,
binds and loads its own runner on its next use in the child.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import replace
from typing import Any

from crag_integrations.config import EngineConfig, as_engine_config
from crag_integrations.engine.cross_encoder_engine import CrossEncoderEngine
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
        ``max_wait_ms``, ``max_queue``, ``cache_size`` or ``cache_bytes`` share one loaded
        model (and its score cache); ``backend`` and ``quantize`` name other weights (a
        torch and an ONNX engine of one checkpoint are two loaded models).

    Example:
        >>> a = get_engine("cross-encoder/ms-marco-MiniLM-L6-v2", device="cpu")
        >>> b = get_engine(EngineConfig(model="cross-encoder/ms-marco-MiniLM-L6-v2", device="cpu"))
        >>> a is b
        True
    """
    if isinstance(config, str):
        config = EngineConfig(model=config, **overrides) if overrides else as_engine_config(config)
    elif overrides:
        config = replace(config, **overrides)
    # The steady state: a dict read, atomic under the GIL, no lock.
    engine = _ENGINES.get(config)
    if engine is not None:
        return engine
    with _REGISTRY_LOCK:
        engine = _ENGINES.get(config)
        if engine is None:
            engine = _ENGINES[config] = CrossEncoderEngine(config, _runner_for)
        return engine


def _runner_for(config: EngineConfig) -> ModelRunner:
    """The runner of the weights ``config`` names, created on first need (imports torch)."""
    from crag_integrations.engine.devices import resolve_device, resolve_dtype

    if config.backend == "onnx":
        from crag_integrations.engine.onnx import resolve_onnx_device

        device = resolve_onnx_device(config.device, quantize=config.quantize)
        dtype = "float32"  # the exported graph is float32 (int8 is a rewrite of it)
    else:
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
    key = LoadKey(
        model=config.model,
        revision=config.revision,
        device=device,
        dtype=dtype,
        trust_remote_code=config.trust_remote_code,
        local_files_only=config.local_files_only,
        cache_dir=config.cache_dir,
        compile=config.compile,
        backend=config.backend,
        quantize=config.quantize,
    )
    with _REGISTRY_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = _RUNNERS[key] = ModelRunner(key)
    if config.uses_cache:
        runner.cache.grow(config.cache_size, config.cache_bytes)
    return runner


def release_engines() -> int:
    """Stop every engine's owner thread and free its weights; returns how many were freed.

    Callers waiting on a released engine get a ``RuntimeError`` ("released") instead of a
    result. Engines obtained earlier raise a clear error if used again; call
    :func:`get_engine` for a fresh one (the roles and adapters do this for you on their
    next call).
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


def _reset_after_fork() -> None:
    """In a forked child: forget the parent's runners, so engines load afresh on next use.

    Only the forking thread exists in the child: the owner threads, and any thread that
    held a lock at the fork, are gone. New locks, no runners; the engines stay (so objects
    obtained before the fork keep working) but unbind from the parent's runners.
    """
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    _RUNNERS.clear()
    for engine in list(_ENGINES.values()):
        engine._unbind()


os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(release_engines)
