"""Corpus scoring on one machine: rows in, the same rows plus score columns out.

Rows are ``(query, text)`` pairs with any other columns (ids, labels), read from JSONL,
Parquet or CSV. Each batch is grouped by query and every group is sent to the chosen role
at once, so the shared engine coalesces the whole batch into shared forward passes. The
output keeps every input column, in input order, and adds the role's columns
(:data:`OUTPUT_COLUMNS`); nested values (a grade's distribution, a highlight's spans) are
JSON strings so that JSONL, CSV and Parquet files hold the same values.

Runs are resumable: rows already in the output are skipped on the next run (the output
is appended to, one completed batch at a time). The same columns come out of the Ray Data
path (:func:`crag_integrations.ray.score_dataset`), which reuses :func:`score_columns`;
:func:`score_file` takes its rows from a :class:`RowScorer`, the local engine by default or
:class:`crag_integrations.ray.RayRowScorer` (this module never imports Ray).

Example:
    >>> spec = ScoreSpec(model="cross-encoder/ms-marco-MiniLM-L6-v2", role="rerank")
    >>> spec.output_columns
    ('score', 'probability', 'num_windows')
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO, get_args

from crag_integrations.by_query import aper_query, run_coroutine
from crag_integrations.config import EngineConfig, as_engine_config
from crag_integrations.roles import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.types import Grade, Highlight, RankedText

__all__ = [
    "OUTPUT_COLUMNS",
    "ROLES",
    "Role",
    "RowScorer",
    "ScoreSpec",
    "add_score_arguments",
    "count_rows",
    "read_rows",
    "score_columns",
    "score_file",
    "score_from_args",
    "score_rows_locally",
]

Role = Literal["rerank", "grade", "highlight"]
ROLES: tuple[Role, ...] = get_args(Role)

#: Columns each role adds to every row, in this order.
OUTPUT_COLUMNS: Mapping[Role, tuple[str, ...]] = {
    "rerank": ("score", "probability", "num_windows"),
    "grade": ("label", "probability", "relevant", "distribution", "num_windows"),
    "highlight": ("trimmed_text", "spans", "num_spans", "num_windows"),
}

_FORMATS = (".jsonl", ".parquet", ".csv")

Row = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ScoreSpec:
    """What to compute for every row: the model, the role and the role's options.

    Args:
        model: Hub id, local directory or :class:`EngineConfig`.
        role: ``"rerank"`` (raw logit and sigmoid probability), ``"grade"`` (label,
            relevance probability, verdict, label distribution) or ``"highlight"``
            (evidence spans and the trimmed text).
        query_column: Input column holding the query.
        text_column: Input column holding the text to score.
        threshold: The grader's relevance threshold or the highlighter's evidence
            threshold (``None``: the role's default); rejected for ``rerank``.
        relevant_labels: For multi-class graders, the labels that mean relevant.

    Example:
        >>> ScoreSpec(model="m", role="grade", threshold=0.7).role
        'grade'
    """

    model: str | EngineConfig
    role: Role = "rerank"
    query_column: str = "query"
    text_column: str = "text"
    threshold: float | None = None
    relevant_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        as_engine_config(self.model)
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if self.role == "rerank" and self.threshold is not None:
            raise ValueError("threshold applies to role 'grade' or 'highlight', not 'rerank'")
        if self.relevant_labels is not None and self.role != "grade":
            raise ValueError("relevant_labels applies to role 'grade' only")
        if self.query_column == self.text_column:
            raise ValueError("query_column and text_column must be different columns")
        if self.relevant_labels is not None:
            object.__setattr__(self, "relevant_labels", tuple(self.relevant_labels))
        self.build_role()  # invalid role options fail here, not on the first batch

    @property
    def output_columns(self) -> tuple[str, ...]:
        """The columns this spec adds to every row."""
        return OUTPUT_COLUMNS[self.role]

    def build_role(self) -> Reranker | RelevanceGrader | EvidenceHighlighter:
        """The role object (cheap: loads nothing)."""
        if self.role == "rerank":
            return Reranker(model=self.model)
        if self.role == "grade":
            if self.threshold is None:
                return RelevanceGrader(model=self.model, relevant_labels=self.relevant_labels)
            return RelevanceGrader(
                model=self.model, threshold=self.threshold, relevant_labels=self.relevant_labels
            )
        if self.threshold is None:
            return EvidenceHighlighter(model=self.model)
        return EvidenceHighlighter(model=self.model, threshold=self.threshold)


# --------------------------------------------------------------------------------------
# Scoring a batch of rows (shared with the Ray Data path)


def _rerank_columns(result: RankedText) -> tuple[Any, ...]:
    return (result.score, result.probability, result.num_windows)


def _grade_columns(result: Grade) -> tuple[Any, ...]:
    distribution = json.dumps(dict(result.distribution))
    return (result.label, result.probability, result.relevant, distribution, result.num_windows)


def _highlight_columns(result: Highlight) -> tuple[Any, ...]:
    spans = json.dumps([asdict(span) for span in result.spans], ensure_ascii=False)
    return (result.trimmed_text, spans, len(result.spans), result.num_windows)


async def _score_pairs(
    role: Reranker | RelevanceGrader | EvidenceHighlighter, pairs: Sequence[tuple[str, str]]
) -> list[tuple[Any, ...]]:
    async def one(query: str, group: list[str]) -> list[tuple[Any, ...]]:
        if isinstance(role, Reranker):
            return [_rerank_columns(r) for r in await role.ascore_texts(query, group)]
        if isinstance(role, RelevanceGrader):
            return [_grade_columns(g) for g in await role.agrade(query, group)]
        return [_highlight_columns(h) for h in await role.ahighlight(query, group)]

    # Every query of the batch is in flight before the engine's owner thread drains its
    # queue, so the whole batch shares forward passes.
    return await aper_query(pairs, one)


def score_columns(
    spec: ScoreSpec, queries: Sequence[str], texts: Sequence[str], *, first_row: int = 0
) -> dict[str, list[Any]]:
    """Score ``(queries[i], texts[i])`` for every ``i``; one list per output column.

    Rows sharing a query are scored in one role call, and every query of the batch is in
    flight at once, so the engine batches them together. Values come back in row order.
    ``first_row`` is the batch's position in the corpus, for error messages.

    Raises:
        ValueError: The lists differ in length.
        TypeError: A query or text is not a string (names the row).
    """
    if len(queries) != len(texts):
        raise ValueError(f"{len(queries)} queries but {len(texts)} texts")
    for position, (query, text) in enumerate(zip(queries, texts, strict=True)):
        if not isinstance(query, str) or not isinstance(text, str):
            raise TypeError(
                f"row {first_row + position}: {spec.query_column!r} and "
                f"{spec.text_column!r} must be strings, not {type(query).__name__} and "
                f"{type(text).__name__}"
            )
    columns: dict[str, list[Any]] = {name: [] for name in spec.output_columns}
    if not texts:
        return columns
    role = spec.build_role()
    pairs = list(zip(queries, texts, strict=True))
    values = run_coroutine(lambda: _score_pairs(role, pairs))
    for row in values:
        for name, value in zip(spec.output_columns, row, strict=True):
            columns[name].append(value)
    return columns


def _score_rows(spec: ScoreSpec, rows: Sequence[Row], first_row: int) -> list[Row]:
    for position, row in enumerate(rows, start=first_row):
        for column in (spec.query_column, spec.text_column):
            if column not in row:
                raise KeyError(f"row {position} has no {column!r} column (has {sorted(row)})")
        clashes = [name for name in spec.output_columns if name in row]
        if clashes:
            raise ValueError(
                f"input rows already have output column(s) {clashes}; rename them first"
            )
    columns = score_columns(
        spec,
        [r[spec.query_column] for r in rows],
        [r[spec.text_column] for r in rows],
        first_row=first_row,
    )
    return [
        {**row, **{name: columns[name][i] for name in spec.output_columns}}
        for i, row in enumerate(rows)
    ]


# --------------------------------------------------------------------------------------
# Reading rows


def _format_of(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"{what} {str(path)!r} must end in .jsonl, .parquet or .csv")
    return suffix


def _import_pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            "Parquet files need pyarrow: pip install pyarrow "
            '(or pip install "crag-integrations[ray]", which brings it)'
        ) from exc
    return pq


def read_rows(path: str | os.PathLike[str], *, skip: int = 0) -> Iterator[Row]:
    """Stream the rows of a ``.jsonl``, ``.parquet`` or ``.csv`` file as dicts.

    CSV values stay strings (an id such as ``"007"`` keeps its zeros); JSONL and Parquet
    values keep their types.

    Args:
        path: The input file.
        skip: Rows to skip from the start (used to resume).

    Raises:
        ValueError: Unknown extension, or a JSONL line that is not a JSON object (names
            the line).
    """
    path = Path(path)
    suffix = _format_of(path, "input")
    rows: Iterable[Row]
    if suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif suffix == ".csv":
        rows = _read_csv(path)
    else:
        rows = _read_parquet(path)
    for position, row in enumerate(rows):
        if position >= skip:
            yield row


def _read_jsonl(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: each line must be a JSON object")
            yield row


def _read_csv(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8", newline="") as handle:
        yield from csv.DictReader(handle)


def _read_parquet(path: Path) -> Iterator[Row]:
    parquet_file = _import_pyarrow().ParquetFile(path)
    for batch in parquet_file.iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def count_rows(path: str | os.PathLike[str]) -> int:
    """Rows in a ``.jsonl``, ``.parquet`` or ``.csv`` file (0 when it does not exist)."""
    path = Path(path)
    if _format_of(path, "file") == ".parquet" and path.exists():
        return int(_import_pyarrow().ParquetFile(path).metadata.num_rows)
    if not path.exists():
        return 0
    return sum(1 for _ in read_rows(path))


# --------------------------------------------------------------------------------------
# Writing rows, resumably


class _Writer(Protocol):
    written: int

    def write(self, rows: Sequence[Row]) -> None: ...

    def close(self, *, complete: bool) -> None: ...


class _JsonlWriter:
    """Appends one JSON object per line; a torn last line (a killed run) is cut off."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            _drop_torn_tail(path)
        self.written = count_rows(path)
        self._handle: TextIO = path.open("a", encoding="utf-8")

    def write(self, rows: Sequence[Row]) -> None:
        self._handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        self._handle.flush()
        self.written += len(rows)

    def close(self, *, complete: bool) -> None:
        self._handle.close()


def _drop_torn_tail(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


class _CsvWriter:
    """Appends CSV rows; the header is written once and fixes the column order."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fields: list[str] | None = None
        if path.exists() and path.stat().st_size:
            _drop_torn_tail(path)
            with path.open(encoding="utf-8", newline="") as handle:
                self._fields = next(csv.reader(handle), None)
        self.written = count_rows(path)
        self._handle: TextIO = path.open("a", encoding="utf-8", newline="")
        self._csv: csv.DictWriter[str] | None = None

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        if self._csv is None:
            new_file = self._fields is None
            self._fields = self._fields or list(rows[0])
            self._csv = csv.DictWriter(self._handle, fieldnames=self._fields)
            if new_file:
                self._csv.writeheader()
        self._csv.writerows(rows)
        self._handle.flush()
        self.written += len(rows)

    def close(self, *, complete: bool) -> None:
        self._handle.close()


class _ParquetWriter:
    """Writes one part file per batch next to the output, then joins them into it.

    A Parquet file cannot be appended to, and one torn by a killed run is unreadable, so
    completed batches live in ``<output>.parts/`` until the run ends; a rerun counts them
    and carries on.
    """

    def __init__(self, path: Path) -> None:
        self._pq = _import_pyarrow()
        self._path = path
        self._parts = path.with_name(path.name + ".parts")
        self._done = path.exists() and not self._parts.exists()
        if self._done:
            self.written = count_rows(path)
            return
        self._parts.mkdir(exist_ok=True)
        for stray in self._parts.glob("*.tmp"):
            stray.unlink()
        self.written = sum(count_rows(p) for p in self._part_files())

    def _part_files(self) -> list[Path]:
        return sorted(self._parts.glob("part-*.parquet"))

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        if self._done:
            raise RuntimeError(f"{self._path} is complete; delete it to score again")
        import pyarrow as pa

        number = len(self._part_files())
        final = self._parts / f"part-{number:06d}.parquet"
        temporary = final.with_suffix(".tmp")
        self._pq.write_table(pa.Table.from_pylist(list(rows)), temporary)
        temporary.rename(final)  # atomic: a part file is either whole or absent
        self.written += len(rows)

    def close(self, *, complete: bool) -> None:
        if self._done or not complete:
            return  # a failed run keeps its part files for the rerun
        parts = self._part_files()
        if parts:
            import pyarrow as pa

            tables = [self._pq.read_table(p) for p in parts]
            self._pq.write_table(pa.concat_tables(tables, promote_options="default"), self._path)
        shutil.rmtree(self._parts)


def _open_writer(path: Path) -> _Writer:
    suffix = _format_of(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".jsonl":
        return _JsonlWriter(path)
    if suffix == ".csv":
        return _CsvWriter(path)
    return _ParquetWriter(path)


# --------------------------------------------------------------------------------------
# The run


class _Progress:
    """``scored/total pairs, pairs/s, ETA`` on stderr, at most a few times a second."""

    def __init__(self, total: int, done: int, stream: TextIO | None) -> None:
        self._total, self._done, self._stream = total, done, stream
        self._start = time.monotonic()
        self._scored = 0
        self._last = 0.0

    def update(self, scored: int, *, final: bool = False) -> None:
        self._scored += scored
        now = time.monotonic()
        if self._stream is None or (not final and now - self._last < 0.5):
            return
        self._last = now
        elapsed = max(now - self._start, 1e-9)
        rate = self._scored / elapsed
        done = self._done + self._scored
        left = max(self._total - done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        self._stream.write(
            f"\rscored {done}/{self._total} pairs, {rate:.1f} pairs/s, ETA {eta}"
            + ("\n" if final else "")
        )
        self._stream.flush()

    @property
    def scored(self) -> int:
        return self._scored

    @property
    def rate(self) -> float:
        return self._scored / max(time.monotonic() - self._start, 1e-9)


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class RowScorer(Protocol):
    """Turns rows into scored rows, in order, a batch at a time (local engine or Ray)."""

    def __call__(
        self, spec: ScoreSpec, rows: Iterable[Row], *, batch_size: int, first_row: int
    ) -> Iterator[list[Row]]:
        """Yield ``rows`` with ``spec``'s columns added, in input order, in batches.

        ``first_row`` is the first row's position in the corpus (for error messages).
        """
        ...


def score_rows_locally(
    spec: ScoreSpec, rows: Iterable[Row], *, batch_size: int, first_row: int = 0
) -> Iterator[list[Row]]:
    """The default :class:`RowScorer`: the local shared engine, one batch per call."""
    position = first_row
    for batch in _batches(rows, batch_size):
        yield _score_rows(spec, batch, position)
        position += len(batch)


def score_file(
    spec: ScoreSpec,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    progress: TextIO | None = sys.stderr,
    scorer: RowScorer = score_rows_locally,
) -> dict[str, Any]:
    """Score every row of ``input_path`` into ``output_path``, skipping rows already there.

    Args:
        spec: Model, role and columns.
        input_path: ``.jsonl``, ``.parquet`` or ``.csv`` rows.
        output_path: ``.jsonl``, ``.parquet`` or ``.csv``; appended to when it holds a
            previous run's rows (which must be that run's first rows, in input order).
        batch_size: Rows per scoring call (and per write).
        progress: Where the progress line goes (``None``: nowhere).
        scorer: Where rows are scored: the local engine, or
            ``crag_integrations.ray.RayRowScorer(address=...)`` for a Ray cluster. The
            output is the same.

    Returns:
        ``{"rows": total rows, "scored": scored now, "skipped": already there,
        "seconds": ..., "pairs_per_second": ...}``.

    Raises:
        ValueError: The output holds more rows than the input (not a previous run of it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.resolve() == output_path.resolve():
        raise ValueError("input and output must be different files")
    total = count_rows(input_path)
    writer = _open_writer(output_path)
    start = time.monotonic()
    complete = False
    try:
        skipped = writer.written
        if skipped > total:
            raise ValueError(
                f"{output_path} already holds {skipped} rows but {input_path} has {total}: "
                "it is not a previous run of this input; choose another output"
            )
        meter = _Progress(total, skipped, progress)
        rows = read_rows(input_path, skip=skipped)
        for scored_rows in scorer(spec, rows, batch_size=batch_size, first_row=skipped):
            writer.write(scored_rows)
            meter.update(len(scored_rows))
        meter.update(0, final=True)
        complete = True
    finally:
        writer.close(complete=complete)
    seconds = time.monotonic() - start
    scored = total - skipped
    return {
        "rows": total,
        "scored": scored,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "pairs_per_second": round(meter.rate, 1) if scored else 0.0,
    }


# --------------------------------------------------------------------------------------
# Command line (wired into ``crag-integrations score`` by crag_integrations.cli)


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``score`` subcommand's arguments to ``parser``."""
    parser.add_argument("--model", required=True, help="hub id or checkpoint directory")
    parser.add_argument("--input", required=True, help="rows: .jsonl, .parquet or .csv")
    parser.add_argument("--output", required=True, help=".jsonl, .parquet or .csv (resumed)")
    parser.add_argument("--role", choices=ROLES, default="rerank")
    parser.add_argument("--query-column", default="query")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--threshold", type=float, default=None, help="grade/highlight threshold")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per scoring call")
    parser.add_argument(
        "--ray", default=None, metavar="ADDRESS", help="score on this Ray cluster ('auto', ...)"
    )
    parser.add_argument("--ray-actors", type=int, default=1, help="engine actors on Ray")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def score_from_args(args: argparse.Namespace, *, scorer: RowScorer | None = None) -> dict[str, Any]:
    """Run the ``score`` subcommand and return its summary (for the CLI's dispatcher).

    Raises:
        ValueError: ``--ray`` was given without a Ray ``scorer``.
    """
    if args.ray is not None and scorer is None:
        raise ValueError(
            "--ray needs a Ray scorer: crag_integrations.ray.RayRowScorer.from_args(args)"
        )
    spec = ScoreSpec(
        model=EngineConfig(model=args.model, device=args.device),
        role=args.role,
        query_column=args.query_column,
        text_column=args.text_column,
        threshold=args.threshold,
    )
    summary = score_file(
        spec,
        args.input,
        args.output,
        batch_size=args.batch_size,
        progress=None if args.quiet else sys.stderr,
        scorer=score_rows_locally if scorer is None else scorer,
    )
    return summary
