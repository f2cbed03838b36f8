"""Scale out on Ray: a Serve application over the shared engine, and Ray Data corpus scoring.

Needs the ``ray`` extra (``pip install "crag-integrations[ray]"``); ``import
crag_integrations`` never imports this package.

- :func:`build_app` / :class:`ServedModel`: a Ray Serve application hosting one engine per
  replica for each model, every role over it, behind Cohere- and TEI-compatible rerank
  routes and our own grade / highlight / CRAG evaluate routes
  (:mod:`crag_integrations.ray.http_api`). :func:`app_builder` is the entry point for a
  Serve config file (``import_path: crag_integrations.ray.serve:app_builder``).
- :func:`score_dataset`: score a ``ray.data.Dataset`` of rows with a pool of engine actors.
- :class:`RemoteEngine`: a served model as a scoring backend, so the roles, the pipeline,
  CRAG and both adapters run on a deployment (over HTTP, or its handle in the cluster)
  with the local engine's results.

Example:
    >>> from ray import serve  # doctest: +SKIP
    >>> from crag_integrations import EngineConfig
    >>> from crag_integrations.ray import ServedModel, build_app  # doctest: +SKIP
    >>> app = build_app([ServedModel(engine=EngineConfig(model="/models/rr"), name="rr")])
    ... # doctest: +SKIP
    >>> serve.run(app, name="crag", route_prefix="/")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crag_integrations.ray.data import RayRowScorer, score_dataset, write_scores
    from crag_integrations.ray.http_api import create_app
    from crag_integrations.ray.model_server import LocalBackend, ModelServer
    from crag_integrations.ray.remote import RemoteEngine, RemoteEngineError
    from crag_integrations.ray.serve import (
        INGRESS_NAME,
        AppArgs,
        ModelArgs,
        ServedModel,
        app_builder,
        build_app,
        model_deployment_name,
    )

__all__ = [
    "INGRESS_NAME",
    "AppArgs",
    "LocalBackend",
    "ModelArgs",
    "ModelServer",
    "RayRowScorer",
    "RemoteEngine",
    "RemoteEngineError",
    "ServedModel",
    "app_builder",
    "build_app",
    "create_app",
    "model_deployment_name",
    "score_dataset",
    "write_scores",
]

# Each name is imported from its module on first use, so a client that only needs
# RemoteEngine over HTTP imports httpx, not Ray (measured: 11 s of imports on a loaded
# 2-core machine for Ray Serve and Ray Data together).
_HOMES = {
    "RayRowScorer": "data",
    "score_dataset": "data",
    "write_scores": "data",
    "create_app": "http_api",
    "LocalBackend": "model_server",
    "ModelServer": "model_server",
    "RemoteEngine": "remote",
    "RemoteEngineError": "remote",
    "INGRESS_NAME": "serve",
    "AppArgs": "serve",
    "ModelArgs": "serve",
    "ServedModel": "serve",
    "app_builder": "serve",
    "build_app": "serve",
    "model_deployment_name": "serve",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
