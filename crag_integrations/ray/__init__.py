"""Scale out on Ray: a Serve application over the shared engine, and Ray Data corpus scoring.

Needs the ``ray`` extra (``pip install "crag-integrations[ray]"``); ``import
crag_integrations`` never imports this package.

- :func:`build_app` / :class:`ServedModel`: a Ray Serve application hosting one engine per
  replica for each model, every role over it, behind Cohere- and TEI-compatible rerank
  routes and our own grade / highlight / CRAG evaluate routes
  (:mod:`crag_integrations.ray.http_api`). :func:`app_builder` is the entry point for a
  Serve config file (``import_path: crag_integrations.ray.serve:app_builder``).
- :func:`score_dataset`: score a ``ray.data.Dataset`` of rows with a pool of engine actors.

Example:
    >>> from ray import serve  # doctest: +SKIP
    >>> from crag_integrations import EngineConfig
    >>> from crag_integrations.ray import ServedModel, build_app  # doctest: +SKIP
    >>> app = build_app([ServedModel(engine=EngineConfig(model="/models/rr"), name="rr")])
    ... # doctest: +SKIP
    >>> serve.run(app, name="crag", route_prefix="/")  # doctest: +SKIP
"""

from crag_integrations.ray.data import RayRowScorer, score_dataset, write_scores
from crag_integrations.ray.http_api import create_app
from crag_integrations.ray.model_server import LocalBackend, ModelServer
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
    "ServedModel",
    "app_builder",
    "build_app",
    "create_app",
    "model_deployment_name",
    "score_dataset",
    "write_scores",
]
