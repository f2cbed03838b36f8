"""A Ray Serve application: one engine per replica per model, every role, one HTTP ingress.

The application has one deployment per model (``model-<name>``: a
:class:`~crag_integrations.ray.model_server.ModelServer`, so one shared engine per
replica answering rerank / grade / highlight / CRAG evaluate), each with its own replica
resources and autoscaling, and one ``ingress`` deployment holding the FastAPI routes of
:mod:`crag_integrations.ray.http_api`, which sends each request to the model it names.

Concurrent requests to a replica are coalesced into shared forward passes by the engine
itself, so the model deployments use no ``@serve.batch``: measured on the project's 2-core
CPU machine, wrapping the verbs in ``@serve.batch`` added a per-request wait and no
throughput (see ``docs/scale-out.md``).

The ingress retries a request whose replica died (scoring is idempotent) until
``retry_deadline_s``, then answers 503; a request the model itself rejects is not retried.

From Python::

    from ray import serve
    from crag_integrations import EngineConfig
    from crag_integrations.ray import ServedModel, build_app

    reranker = EngineConfig(model="cross-encoder/ms-marco-MiniLM-L6-v2")
    app = build_app([
        ServedModel(name="reranker", engine=reranker, num_gpus=0.25, max_replicas=4),
    ])
    serve.run(app, name="crag", route_prefix="/")

From a Serve config file, ``import_path: crag_integrations.ray.serve:app_builder`` with the
fields of :class:`AppArgs` under ``args`` (see ``examples/serve_config.yaml``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crag_integrations.config import EngineConfig
from crag_integrations.ray.http_api import BackendUnavailableError, create_app
from crag_integrations.ray.model_server import ModelServer, UnknownModelError

try:
    import ray
    from ray import serve
    from ray.serve.deployment import Deployment
    from ray.serve.handle import DeploymentHandle
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'crag_integrations.ray needs Ray Serve: pip install "crag-integrations[ray]"'
    ) from exc

__all__ = [
    "INGRESS_NAME",
    "AppArgs",
    "ModelArgs",
    "ServedModel",
    "app_builder",
    "build_app",
    "model_deployment_name",
]

logger = logging.getLogger(__name__)

#: The ingress deployment's name (for ``deployments:`` overrides in a Serve config file).
INGRESS_NAME = "ingress"

# A replica that died or is being replaced: safe to retry, scoring has no side effects.
_REPLICA_GONE: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    serve.exceptions.DeploymentUnavailableError,
    serve.exceptions.ReplicaUnavailableError,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def model_deployment_name(name: str) -> str:
    """The deployment serving model ``name`` (``model-<name>``)."""
    return f"model-{name}"


@dataclass(frozen=True, kw_only=True)
class ServedModel:
    """One model of the application and the replicas that serve it.

    Args:
        engine: The engine every replica hosts.
        name: What requests call it (the ``model`` field); default: the last path
            component of ``engine.model``.
        num_replicas: Fixed replica count (ignored when ``max_replicas`` is set).
        num_cpus: CPUs reserved per replica.
        num_gpus: GPUs reserved per replica; fractions share a GPU (``0.25``: four
            replicas per GPU). Set ``engine.device`` to ``"cuda"`` or leave it ``"auto"``.
        min_replicas: Autoscaling floor (used when ``max_replicas`` is set).
        max_replicas: Autoscaling ceiling; setting it turns autoscaling on.
        target_ongoing_requests: Requests in flight per replica the autoscaler aims for.
        max_ongoing_requests: Requests a replica accepts at once; more wait in the
            router. Keep it well above ``target_ongoing_requests``: the engine coalesces
            what is in flight, so a replica needs several requests to fill a batch.

    Example:
        >>> ServedModel(engine=EngineConfig(model="org/rerank-base"), num_gpus=0.5).name
        'rerank-base'
    """

    engine: EngineConfig
    name: str = ""
    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_replicas: int = 1
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.engine, EngineConfig):
            raise TypeError(f"engine must be an EngineConfig, not {type(self.engine).__name__}")
        if not self.name:
            object.__setattr__(self, "name", self.engine.model.rstrip("/").split("/")[-1])
        if not _NAME.match(self.name):
            raise ValueError(
                f"model name {self.name!r} must start with a letter or digit and hold only "
                "letters, digits, '_', '.' and '-'"
            )
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, not {self.num_replicas}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")
        if self.max_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"need 0 <= min_replicas ({self.min_replicas}) <= max_replicas "
                f"({self.max_replicas})"
            )
        if self.target_ongoing_requests <= 0 or self.max_ongoing_requests < 1:
            raise ValueError("target_ongoing_requests and max_ongoing_requests must be positive")

    def deployment_options(self) -> dict[str, Any]:
        """The ``Deployment.options(...)`` keywords for this model."""
        options: dict[str, Any] = {
            "name": model_deployment_name(self.name),
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.max_replicas is None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        return options


class _HandleBackend:
    """The routes' backend inside the ingress replica: a deployment handle per model."""

    def __init__(
        self,
        handles: Mapping[str, DeploymentHandle[Any]],
        configs: Mapping[str, EngineConfig],
        retry_deadline_s: float,
    ) -> None:
        self._handles = dict(handles)
        self._configs = dict(configs)
        self._retry_deadline_s = retry_deadline_s

    def model_names(self) -> list[str]:
        return list(self._configs)

    def engine_config(self, model: str) -> EngineConfig:
        try:
            return self._configs[model]
        except KeyError:
            raise UnknownModelError(model) from None

    async def call(self, model: str, verb: str, /, *args: Any, **kwargs: Any) -> Any:
        try:
            handle = self._handles[model]
        except KeyError:
            raise UnknownModelError(model) from None
        method = handle.options(method_name=verb)
        deadline = time.monotonic() + self._retry_deadline_s
        attempt = 0
        while True:
            try:
                return await method.remote(*args, **kwargs)
            except _REPLICA_GONE as exc:
                attempt += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendUnavailableError(
                        f"no replica of {model!r} answered {verb!r} within "
                        f"{self._retry_deadline_s:g}s ({attempt} attempts; last: "
                        f"{type(exc).__name__})"
                    ) from exc
                logger.warning(
                    "%s on %r: replica gone (%s); retry %d",
                    verb,
                    model,
                    type(exc).__name__,
                    attempt,
                )
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0, left))


@serve.ingress()
class HttpIngress:
    """The ingress deployment: HTTP routes, and :meth:`call` for in-cluster handles.

    Args:
        handles: Model name -> the handle of its deployment.
        configs: Model name -> its engine config (options are validated here).
        retry_deadline_s: How long to keep retrying a request whose replica died.
    """

    def __init__(
        self,
        handles: dict[str, DeploymentHandle[Any]],
        configs: dict[str, EngineConfig],
        retry_deadline_s: float,
    ) -> None:
        self._backend = _HandleBackend(handles, configs, retry_deadline_s)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self._backend)

    async def call(self, model: str, verb: str, /, *args: Any, **kwargs: Any) -> Any:
        """``verb`` (a :class:`ModelServer` method) on ``model``, retried like HTTP."""
        return await self._backend.call(model, verb, *args, **kwargs)


def build_app(
    models: Sequence[ServedModel | EngineConfig],
    *,
    ingress_num_cpus: float = 0.0,
    ingress_replicas: int = 1,
    retry_deadline_s: float = 60.0,
) -> serve.Application:
    """The Serve application for ``models``: pass it to ``serve.run``.

    Args:
        models: Each model, as a :class:`ServedModel` (or a bare :class:`EngineConfig`
            with one replica of 1 CPU). The first is the default of the TEI route.
        ingress_num_cpus: CPUs reserved per ingress replica (it only parses JSON and
            forwards; 0 lets it share a node's CPUs with the model replicas).
        ingress_replicas: Ingress replicas (one is plenty for a few thousand req/s).
        retry_deadline_s: How long a request whose replica died is retried.

    Raises:
        ValueError: No models, or two models with one name.

    Example:
        >>> app = build_app([EngineConfig(model="/models/reranker")])  # doctest: +SKIP
        >>> serve.run(app, name="crag", route_prefix="/")  # doctest: +SKIP
    """
    served = [m if isinstance(m, ServedModel) else ServedModel(engine=m) for m in models]
    if not served:
        raise ValueError("build_app needs at least one model")
    names = [m.name for m in served]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model names must be unique; repeated: {duplicates}")
    if retry_deadline_s < 0:
        raise ValueError(f"retry_deadline_s must be >= 0, not {retry_deadline_s}")
    model_deployment: Deployment = serve.deployment()(ModelServer)
    handles = {
        m.name: model_deployment.options(**m.deployment_options()).bind(m.engine, name=m.name)
        for m in served
    }
    ingress = serve.deployment()(HttpIngress).options(
        name=INGRESS_NAME,
        num_replicas=ingress_replicas,
        ray_actor_options={"num_cpus": ingress_num_cpus},
        max_ongoing_requests=1024,
    )
    configs = {m.name: m.engine for m in served}
    app: serve.Application = ingress.bind(handles, configs, retry_deadline_s)
    return app


# --------------------------------------------------------------------------------------
# Serve config file entry point

_ENGINE_FIELDS = frozenset(f.name for f in fields(EngineConfig))


class ModelArgs(BaseModel):
    """One model in a Serve config file (``args.models[]``).

    ``model`` is the hub id or path; ``engine`` holds any other :class:`EngineConfig`
    field (``device``, ``dtype``, ``max_length``, ...); the rest are :class:`ServedModel`'s.
    """

    model_config = ConfigDict(extra="forbid")

    model: str
    name: str = ""
    engine: dict[str, Any] = Field(default_factory=dict)
    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_replicas: int = 1
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 64

    def served_model(self) -> ServedModel:
        """This entry as a :class:`ServedModel`."""
        unknown = sorted(set(self.engine) - _ENGINE_FIELDS)
        if unknown:
            raise ValueError(f"unknown engine option(s) {unknown}; EngineConfig takes these")
        engine = EngineConfig(model=self.model, **self.engine)
        options = self.model_dump(exclude={"model", "engine"})
        return ServedModel(engine=engine, **options)


class AppArgs(BaseModel):
    """The ``args`` of ``crag_integrations.ray.serve:app_builder`` in a Serve config file."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelArgs] = Field(min_length=1)
    ingress_num_cpus: float = 0.0
    ingress_replicas: int = 1
    retry_deadline_s: float = 60.0


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Build the application from a Serve config file's ``args`` (see :class:`AppArgs`).

    Example:
        >>> app = app_builder({"models": [{"model": "/models/reranker", "name": "rr"}]})
        ... # doctest: +SKIP
    """
    parsed = AppArgs.model_validate(args)
    return build_app(
        [m.served_model() for m in parsed.models],
        ingress_num_cpus=parsed.ingress_num_cpus,
        ingress_replicas=parsed.ingress_replicas,
        retry_deadline_s=parsed.retry_deadline_s,
    )
