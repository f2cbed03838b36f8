"""Corpus scoring on Ray Data: a pool of engine actors over a ``ray.data.Dataset`` of rows.

Every row keeps all its columns (ids, labels, ...) and gains the role's columns, exactly
those of the local path (:data:`crag_integrations.corpus.OUTPUT_COLUMNS`, computed by the
same :func:`crag_integrations.corpus.score_columns`). Each actor loads one engine; a batch
is scored in one coalesced engine call per actor. A dead actor is restarted and its
unfinished batches rerun by Ray Data, and a batch's rows are emitted only once it is
complete, so every row comes out exactly once.

Example:
    >>> import ray
    >>> from crag_integrations.corpus import ScoreSpec
    >>> rows = ray.data.read_parquet("s3://bucket/pairs/")  # doctest: +SKIP
    >>> scored = score_dataset(rows, ScoreSpec(model="/models/reranker"), actors=(1, 8))
    ... # doctest: +SKIP
    >>> scored.write_parquet("s3://bucket/scored/")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from crag_integrations.corpus import Row, ScoreSpec, score_columns

try:
    import pyarrow as pa  # type: ignore[import-untyped]
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'crag_integrations.ray needs Ray Data: pip install "crag-integrations[ray]"'
    ) from exc

__all__ = ["RayRowScorer", "score_dataset", "write_scores"]


class _BatchScorer:
    """The per-actor callable: one engine, loaded when the actor starts."""

    def __init__(self, spec: ScoreSpec) -> None:
        self._spec = spec
        # Load in the constructor: an actor counts as ready only once it can score, and a
        # load failure stops the job at once instead of failing every batch.
        spec.build_role().engine.load()

    def __call__(self, batch: pa.Table) -> pa.Table:
        spec = self._spec
        for name in (spec.query_column, spec.text_column):
            if name not in batch.column_names:
                raise KeyError(f"the dataset has no {name!r} column (has {batch.column_names})")
        clashes = [name for name in spec.output_columns if name in batch.column_names]
        if clashes:
            raise ValueError(f"the dataset already has output column(s) {clashes}; rename them")
        columns = score_columns(
            spec,
            batch.column(spec.query_column).to_pylist(),
            batch.column(spec.text_column).to_pylist(),
        )
        for name in spec.output_columns:
            batch = batch.append_column(name, pa.array(columns[name]))
        return batch


def score_dataset(
    dataset: ray.data.Dataset,
    spec: ScoreSpec,
    *,
    actors: int | tuple[int, int] = 1,
    batch_size: int = 256,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_tasks_in_flight_per_actor: int | None = None,
) -> ray.data.Dataset:
    """``dataset`` with the role's score columns added to every row (lazy, streaming).

    Args:
        dataset: Rows with ``spec.query_column`` and ``spec.text_column`` (strings) and
            any other columns, which are kept.
        spec: Model, role and role options.
        actors: Engine actors: a fixed pool size, or ``(min, max)`` to autoscale.
        batch_size: Rows per batch handed to an actor (one engine call).
        num_cpus: CPUs reserved per actor.
        num_gpus: GPUs per actor (fractions share a GPU).
        max_tasks_in_flight_per_actor: Batches queued per actor (Ray Data's default
            when ``None``); more lets an actor's next batch be fetched during a pass.

    Returns:
        A lazy dataset; write it with :func:`write_scores` or ``write_parquet`` /
        ``write_json``, or iterate it.

    Raises:
        ValueError: A bad pool size or batch size.
    """
    min_size, max_size = (actors, actors) if isinstance(actors, int) else actors
    if not 1 <= min_size <= max_size:
        raise ValueError(f"actors must be >= 1 (or 1 <= min <= max), not {actors!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    strategy_options: dict[str, Any] = {"min_size": min_size, "max_size": max_size}
    if max_tasks_in_flight_per_actor is not None:
        strategy_options["max_tasks_in_flight_per_actor"] = max_tasks_in_flight_per_actor
    return dataset.map_batches(
        _BatchScorer,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(**strategy_options),
        fn_constructor_args=(spec,),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )


def write_scores(dataset: ray.data.Dataset, path: str) -> None:
    """Write a scored dataset as Parquet (``path`` ending in ``.parquet`` or a folder) or
    JSONL (``path`` ending in ``.jsonl``); Ray writes a folder of part files either way.
    """
    if path.rstrip("/").endswith(".jsonl"):
        dataset.write_json(path)
    else:
        dataset.write_parquet(path)


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True, kw_only=True)
class RayRowScorer:
    """A :class:`crag_integrations.corpus.RowScorer` on a Ray cluster: the ``--ray`` path.

    Rows are read on the driver (by the same reader as the local path, so values are
    identical), sent to the cluster ``chunk_rows`` at a time, scored by
    :func:`score_dataset`, and come back in input order, batch by batch, so the caller
    appends them to its output as they arrive (which keeps the run resumable).

    Args:
        address: The Ray cluster (``"auto"``, ``"ray://head:10001"``, ``"local"``); an
            already initialised Ray is used as it is.
        actors: Engine actors in the pool.
        chunk_rows: Rows per Ray dataset (bounds driver memory; each chunk starts a pool).
        num_cpus: CPUs per actor.
        num_gpus: GPUs per actor.

    Example:
        >>> from crag_integrations.corpus import ScoreSpec, score_file
        >>> score_file(ScoreSpec(model="/models/rr"), "in.jsonl", "out.jsonl",
        ...            scorer=RayRowScorer(address="auto", actors=4))  # doctest: +SKIP
    """

    address: str
    actors: int = 1
    chunk_rows: int = 65_536
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RayRowScorer:
        """The scorer the ``score`` command's ``--ray`` / ``--ray-actors`` ask for."""
        return cls(address=args.ray, actors=args.ray_actors)

    def __call__(
        self, spec: ScoreSpec, rows: Iterable[Row], *, batch_size: int, first_row: int = 0
    ) -> Iterator[list[Row]]:
        """Yield ``rows`` scored, in input order, ``batch_size`` rows at a time."""
        if not ray.is_initialized():
            ray.init(address=self.address)
        context = ray.data.DataContext.get_current()
        preserve_order = context.execution_options.preserve_order
        context.execution_options.preserve_order = True
        try:
            for chunk in _chunks(rows, self.chunk_rows):
                # At least one block per actor, so that a pool of n actors shares the chunk.
                blocks = max(self.actors, min(math.ceil(len(chunk) / batch_size), 200))
                blocks = min(blocks, max(1, len(chunk)))
                scored = score_dataset(
                    ray.data.from_items(chunk, override_num_blocks=blocks),
                    spec,
                    actors=self.actors,
                    batch_size=batch_size,
                    num_cpus=self.num_cpus,
                    num_gpus=self.num_gpus,
                )
                for batch in scored.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
                    table: pa.Table = batch
                    yield table.to_pylist()
        finally:
            context.execution_options.preserve_order = preserve_order
