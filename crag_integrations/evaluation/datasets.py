"""Data in: the shared evaluation sets (TREC DL, XQuAD, WikiQA, SciFact) and your own rows.

Each shared-set loader takes the file itself, or a data folder holding it at its usual place,
or nothing (then ``$CRAG_DATA_DIR``, see :func:`resolve_data_dir`), and returns frozen
plain-Python rows. :func:`load_rows` reads your own ``.jsonl``/``.json``/``.csv``/``.parquet``
files or ``datasets`` objects, for the trainers and checkpoint evaluation alike. Pure Python:
``pyarrow`` is imported only to read a ``.parquet`` file.

Example:
    >>> queries, qrels = load_trec_dl(split="trec-dl19")  # doctest: +SKIP
    >>> len(queries), len(queries[0].doc_ids)  # doctest: +SKIP
    (43, 100)
    >>> load_rows([{"query": "rain?", "document": "Rain is water.", "label": 1}])
    [{'query': 'rain?', 'document': 'Rain is water.', 'label': 1}]
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crag_integrations.errors import DataError
from crag_integrations.scoring import sentence_ranges

__all__ = [
    "DATA_DIR_ENV",
    "DataSource",
    "RankingQuery",
    "Row",
    "SciFactAbstract",
    "SciFactClaim",
    "WikiQARow",
    "XQuADQuestion",
    "load_rows",
    "load_scifact",
    "load_trec_dl",
    "load_wikiqa",
    "load_xquad",
    "parse_span",
    "read_qrels",
    "require_columns",
    "resolve_data_dir",
    "sentence_spans",
]

#: Environment variable naming the folder that holds the shared evaluation data.
DATA_DIR_ENV = "CRAG_DATA_DIR"

#: A half-open ``(start, end)`` character range.
Span = tuple[int, int]
#: One row as a plain dict.
Row = dict[str, Any]
#: A file path (jsonl/json/csv/parquet), a ``datasets.Dataset`` or rows as dicts.
DataSource = str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Any


def sentence_spans(text: str) -> list[Span]:
    """Split ``text`` into sentence character spans, with the package's one sentence splitter.

    The same sentences the highlighter scores (:func:`crag_integrations.scoring.sentence_ranges`):
    a sentence ends at ``.``, ``!`` or ``?`` followed by whitespace, at CJK full stops and at
    blank lines. Used to turn an answer offset into its answer sentence for highlighter
    training data.

    Args:
        text: The context.

    Returns:
        Half-open spans covering each sentence without surrounding whitespace.

    Example:
        >>> text = "Rain falls. It is wet!"
        >>> [text[s:e] for s, e in sentence_spans(text)]
        ['Rain falls.', 'It is wet!']
    """
    return sentence_ranges(text)


def resolve_data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The evaluation-data folder: ``path`` if given, else ``$CRAG_DATA_DIR``.

    Args:
        path: Explicit folder.

    Returns:
        The folder as a ``Path``.

    Raises:
        FileNotFoundError: If neither is given or the folder does not exist.
    """
    chosen = path if path is not None else os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise FileNotFoundError(
            f"no data folder given: pass a path or set {DATA_DIR_ENV} (e.g. ../shared/data)"
        )
    folder = Path(chosen)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    return folder


def _resolve_file(path: str | os.PathLike[str] | None, default_relative: str) -> Path:
    if path is not None and Path(path).is_file():
        return Path(path)
    folder = resolve_data_dir(path)
    candidate = folder / default_relative
    if candidate.is_file():
        return candidate
    nested = folder / Path(default_relative).name
    if nested.is_file():
        return nested
    raise FileNotFoundError(f"{candidate} not found")


@dataclass(frozen=True)
class RankingQuery:
    """A query with its candidate passages, in first-stage (e.g. BM25) order.

    Attributes:
        qid: Query id as in the qrels.
        query: Query text.
        doc_ids: Candidate document ids, first-stage order.
        texts: Candidate texts, parallel to ``doc_ids``.
    """

    qid: str
    query: str
    doc_ids: tuple[str, ...]
    texts: tuple[str, ...]


def load_trec_dl(
    path: str | os.PathLike[str] | None = None, *, split: str = "trec-dl19"
) -> tuple[list[RankingQuery], dict[str, dict[str, int]]]:
    """Load a TREC DL folder (``bm25_top100.json`` + ``qrels.txt``).

    Args:
        path: The split's folder, or the data folder holding ``split``; defaults to
            ``$CRAG_DATA_DIR/<split>``.
        split: Sub-folder name used when ``path`` is the data folder.

    Returns:
        The queries with their candidates in BM25 order, and the qrels
        (query id -> doc id -> grade).
    """
    folder = resolve_data_dir(path)
    if not (folder / "bm25_top100.json").is_file():
        folder = folder / split
    with (folder / "bm25_top100.json").open(encoding="utf-8") as handle:
        raw = json.load(handle)
    queries = []
    for entry in raw:
        hits = sorted(entry["hits"], key=lambda h: int(h["rank"]))
        if not hits:
            continue
        queries.append(
            RankingQuery(
                qid=str(hits[0]["qid"]),
                query=str(entry["query"]),
                doc_ids=tuple(str(h["docid"]) for h in hits),
                texts=tuple(str(h["content"]) for h in hits),
            )
        )
    return queries, read_qrels(folder / "qrels.txt")


def read_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Read a TREC qrels file (``qid iteration docid grade`` per line).

    Args:
        path: The file.

    Returns:
        Query id -> doc id -> grade.
    """
    qrels: dict[str, dict[str, int]] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) < 4:
                continue
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


@dataclass(frozen=True)
class XQuADQuestion:
    """A SQuAD-format question with its paragraph and answer character spans.

    Attributes:
        qid: Question id.
        question: Question text.
        context: The paragraph that answers it.
        answers: Answer ``(start, end)`` spans in ``context``.
        title: Article title (paragraphs of one article are natural hard negatives).
        paragraph_index: Index of the paragraph within the article.
    """

    qid: str
    question: str
    context: str
    answers: tuple[Span, ...]
    title: str
    paragraph_index: int


def load_xquad(path: str | os.PathLike[str] | None = None) -> list[XQuADQuestion]:
    """Load ``xquad.en.json`` (SQuAD v1.1 format).

    Args:
        path: The json file, or a data folder holding ``xquad/xquad.en.json``.

    Returns:
        One entry per question.
    """
    file = _resolve_file(path, "xquad/xquad.en.json")
    with file.open(encoding="utf-8") as handle:
        raw = json.load(handle)
    questions = []
    for article in raw["data"]:
        for p_index, paragraph in enumerate(article["paragraphs"]):
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                spans = tuple(
                    (int(a["answer_start"]), int(a["answer_start"]) + len(a["text"]))
                    for a in qa["answers"]
                )
                questions.append(
                    XQuADQuestion(
                        qid=str(qa["id"]),
                        question=str(qa["question"]),
                        context=context,
                        answers=spans,
                        title=str(article["title"]),
                        paragraph_index=p_index,
                    )
                )
    return questions


@dataclass(frozen=True)
class WikiQARow:
    """One WikiQA question-sentence pair.

    Attributes:
        question_id: Question id (rows of one question share it).
        question: Question text.
        sentence: Candidate answer sentence.
        label: 1 if the sentence answers the question, else 0.
    """

    question_id: str
    question: str
    sentence: str
    label: int


def load_wikiqa(path: str | os.PathLike[str] | None = None) -> list[WikiQARow]:
    """Load ``WikiQA-test.tsv``.

    Args:
        path: The tsv file, or a data folder holding ``wikiqa/WikiQA-test.tsv``.

    Returns:
        The rows in file order.
    """
    file = _resolve_file(path, "wikiqa/WikiQA-test.tsv")
    with file.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [
            WikiQARow(
                question_id=row["QuestionID"],
                question=row["Question"],
                sentence=row["Sentence"],
                label=int(row["Label"]),
            )
            for row in reader
        ]


@dataclass(frozen=True)
class SciFactAbstract:
    """A SciFact corpus abstract.

    Attributes:
        doc_id: Document id.
        title: Title.
        sentences: Abstract sentences (rationale indices point into them).
    """

    doc_id: str
    title: str
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class SciFactClaim:
    """A SciFact claim with its evidence.

    Attributes:
        claim_id: Claim id.
        claim: Claim text.
        evidence: Doc id -> rationale sentence indices (empty for claims without evidence).
        cited_doc_ids: Documents the claim cites (evidence or not).
    """

    claim_id: str
    claim: str
    evidence: Mapping[str, tuple[int, ...]]
    cited_doc_ids: tuple[str, ...]


# The CSVs store numpy array reprs ("['a' 'b']", "[1 2]"), which are not Python literals.
_INT = re.compile(r"-?\d+")
_PY_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", flags=re.DOTALL)


def load_scifact(
    path: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, SciFactAbstract], dict[str, list[SciFactClaim]]]:
    """Load the SciFact CSVs from ``scifact.zip``.

    Args:
        path: The zip file, or a data folder holding ``scifact/scifact.zip``.

    Returns:
        The corpus (doc id -> abstract) and the claims per split (``"train"``,
        ``"validation"``, ``"test"``), with the per-document rows of a claim merged.
    """
    file = _resolve_file(path, "scifact/scifact.zip")
    with zipfile.ZipFile(file) as archive:
        corpus = {}
        for row in _zip_csv(archive, "corpus_train.csv"):
            sentences = tuple(ast.literal_eval(s) for s in _PY_STRING.findall(row["abstract"]))
            corpus[row["doc_id"]] = SciFactAbstract(row["doc_id"], row["title"], sentences)
        splits: dict[str, list[SciFactClaim]] = {}
        for split in ("train", "validation", "test"):
            name = f"claims_{split}.csv"
            if name not in archive.namelist():
                continue
            merged: dict[str, tuple[str, dict[str, tuple[int, ...]], tuple[str, ...]]] = {}
            for row in _zip_csv(archive, name):
                claim = merged.setdefault(
                    row["id"],
                    (row["claim"], {}, tuple(_INT.findall(row["cited_doc_ids"]))),
                )
                indices = {int(i) for i in _INT.findall(row["evidence_sentences"])}
                if row["evidence_doc_id"]:
                    previous = claim[1].get(row["evidence_doc_id"], ())
                    claim[1][row["evidence_doc_id"]] = tuple(sorted({*previous, *indices}))
            splits[split] = [
                SciFactClaim(cid, text, evidence, cited)
                for cid, (text, evidence, cited) in merged.items()
            ]
    return corpus, splits


def _zip_csv(archive: zipfile.ZipFile, name: str) -> list[dict[str, str]]:
    with archive.open(name) as raw:
        return list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))


# --------------------------------------------------------------------------------------
# Your own rows: what the trainers and checkpoint evaluation read
# --------------------------------------------------------------------------------------


def load_rows(source: DataSource) -> list[Row]:
    """Read training or evaluation rows from a file, a ``datasets`` object or dicts.

    Args:
        source: A ``.jsonl``/``.json``/``.csv``/``.parquet`` path, a ``datasets.Dataset`` (or a
            ``DatasetDict`` with a ``train`` split), or a sequence of mappings. In CSV files,
            cells holding JSON lists (spans, candidate lists) are decoded.

    Returns:
        The rows as plain dicts.

    Raises:
        DataError: If the file is missing, of an unknown type, not valid JSON, or empty (a
            ``ValueError``).
    """
    rows: list[Row]
    if isinstance(source, (str, os.PathLike)):
        rows = _read_file(Path(source))
    elif _is_dataset_dict(source):
        splits: Any = source
        rows = [dict(r) for r in splits["train"]]
    else:
        rows = [dict(r) for r in source]
    if not rows:
        raise DataError("the training/evaluation data is empty")
    return rows


def _read_file(path: Path) -> list[Row]:
    suffix = path.suffix.lower()
    if suffix not in {".jsonl", ".json", ".csv", ".tsv", ".parquet"}:
        raise DataError(f"unknown data file type {suffix!r}; use .jsonl, .json, .csv or .parquet")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist (or is not a file)")
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}, line {number}: not JSON ({error.msg})") from error
        return rows
    if suffix == ".json":
        with path.open(encoding="utf-8") as handle:
            try:
                loaded = json.load(handle)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: not JSON ({error})") from error
        return list(loaded) if isinstance(loaded, list) else list(loaded["data"])
    if suffix in {".csv", ".tsv"}:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            return [{k: _decode_cell(v) for k, v in row.items()} for row in reader]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no stubs

    rows_: list[Row] = pq.read_table(path).to_pylist()
    return rows_


def require_columns(rows: Sequence[Row], columns: Iterable[str], what: str) -> None:
    """Raise :class:`DataError` naming the missing columns when the first row lacks any.

    Args:
        rows: Rows from :func:`load_rows` (non-empty).
        columns: Column names ``what`` needs.
        what: What needs them (for the message).
    """
    wanted = list(columns)
    missing = [c for c in wanted if c not in rows[0]]
    if missing:
        raise DataError(
            f"{what} needs columns {sorted(wanted)}; missing {missing} (have {sorted(rows[0])})"
        )


def parse_span(value: Any, limit: int) -> tuple[int, int]:
    """An evidence span given as ``[start, end]`` or ``{"start", "end"}``, checked against a text.

    Args:
        value: The span.
        limit: Length of the text it points into.

    Returns:
        ``(start, end)`` with ``0 <= start < end <= limit``.

    Raises:
        DataError: The span is empty or reaches outside the text.
    """
    if isinstance(value, Mapping):
        start, end = int(value["start"]), int(value["end"])
    else:
        start, end = int(value[0]), int(value[1])
    if not 0 <= start < end <= limit:
        raise DataError(f"span {value!r} is outside the context of {limit} characters")
    return start, end


def _is_dataset_dict(source: Any) -> bool:
    return (
        hasattr(source, "keys") and "train" in source and hasattr(source["train"], "column_names")
    )


def _decode_cell(value: str) -> Any:
    stripped = value.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value
