"""Local corpus scoring (`crag-integrations score`): parity with the roles, formats, resume."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from crag_integrations import EngineConfig, EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.cli import main
from crag_integrations.corpus import (
    OUTPUT_COLUMNS,
    ScoreSpec,
    add_score_arguments,
    read_rows,
    score_columns,
    score_file,
    score_from_args,
)

QUERIES = ["what causes rain?", "where is the eiffel tower?", "how do plants make food?"]
TEXTS = [
    "Rain forms when water vapour condenses into droplets.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Photosynthesis converts light into chemical energy.",
    "Tokyo is the capital of Japan.",
    "Clouds are made of tiny droplets of water.",
]


def corpus_rows(count: int) -> list[dict[str, Any]]:
    """``count`` rows cycling through the queries and texts, with two id columns."""
    return [
        {
            "qid": f"q{i % len(QUERIES)}",
            "doc_id": f"{i:04d}",
            "query": QUERIES[i % len(QUERIES)],
            "text": TEXTS[(i * 2) % len(TEXTS)] + f" ({i})",
        }
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def local_expected(spec: ScoreSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the roles themselves say about each row, one role call per row."""
    role = spec.build_role()
    expected = []
    for row in rows:
        if isinstance(role, Reranker):
            r = role.score_texts(row["query"], [row["text"]])[0]
            extra: dict[str, Any] = {
                "score": r.score,
                "probability": r.probability,
                "num_windows": r.num_windows,
            }
        elif isinstance(role, RelevanceGrader):
            g = role.grade(row["query"], [row["text"]])[0]
            extra = {
                "label": g.label,
                "probability": g.probability,
                "relevant": g.relevant,
                "distribution": dict(g.distribution),
                "num_windows": g.num_windows,
            }
        else:
            assert isinstance(role, EvidenceHighlighter)
            h = role.highlight(row["query"], [row["text"]])[0]
            extra = {
                "trimmed_text": h.trimmed_text,
                "spans": [
                    {"start": s.start, "end": s.end, "text": s.text, "score": s.score}
                    for s in h.spans
                ],
                "num_spans": len(h.spans),
                "num_windows": h.num_windows,
            }
        expected.append({**row, **extra})
    return expected


def decoded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the JSON-string columns parsed, for comparison with `local_expected`."""
    out = []
    for row in rows:
        row = dict(row)
        for name in ("distribution", "spans"):
            if name in row:
                row[name] = json.loads(row[name])
        out.append(row)
    return out


def assert_rows_close(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert list(got) == list(want)
        for key, value in want.items():
            if isinstance(value, float):
                # float32 sums depend on how rows were padded into batches (measured up to
                # 1.3e-6 relative on logits), so batch-composition-free equality is 1e-5.
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
            elif key == "distribution":
                assert got[key] == pytest.approx(value, abs=1e-6)
            elif key == "spans":
                assert [(s["start"], s["end"], s["text"]) for s in got[key]] == [
                    (s["start"], s["end"], s["text"]) for s in value
                ]
                assert [s["score"] for s in got[key]] == pytest.approx(
                    [s["score"] for s in value], abs=1e-6
                )
            else:
                assert got[key] == value, key


@pytest.mark.parametrize("role", ["rerank", "grade", "highlight"])
def test_every_role_matches_the_role_called_row_by_row(
    role: str, reranker_path: str, grader_path: str, highlighter_path: str, tmp_path: Path
) -> None:
    """Batched, query-grouped scoring gives each row what the role gives it alone."""
    model = {"rerank": reranker_path, "grade": grader_path, "highlight": highlighter_path}[role]
    spec = ScoreSpec(model=model, role=role)  # type: ignore[arg-type]
    rows = corpus_rows(23)
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    summary = score_file(spec, source, tmp_path / "out.jsonl", batch_size=8, progress=None)
    assert summary["rows"] == 23 and summary["scored"] == 23 and summary["skipped"] == 0
    written = decoded(list(read_rows(tmp_path / "out.jsonl")))
    assert_rows_close(written, local_expected(spec, rows))
    assert list(written[0])[-len(OUTPUT_COLUMNS[role]) :] == list(OUTPUT_COLUMNS[role])


def test_score_columns_keeps_row_order_across_interleaved_queries(reranker_path: str) -> None:
    """Rows of one query scattered through a batch get their own scores back."""
    spec = ScoreSpec(model=reranker_path)
    queries = [QUERIES[i % 2] for i in range(10)]
    texts = [TEXTS[i % 5] for i in range(10)]
    columns = score_columns(spec, queries, texts)
    reranker = Reranker(model=reranker_path)
    assert columns["score"] == pytest.approx(
        [reranker.score(q, [t])[0] for q, t in zip(queries, texts, strict=True)], abs=1e-6
    )


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_an_interrupted_run_resumes_where_it_stopped(
    suffix: str, reranker_path: str, tmp_path: Path
) -> None:
    """A run that dies mid-way keeps its finished batches; the rerun scores only the rest."""
    pytest.importorskip("pyarrow")
    spec = ScoreSpec(model=reranker_path)
    rows = corpus_rows(40)
    broken = [dict(r) for r in rows]
    broken[25]["text"] = None  # a bad row kills the run in its batch (rows 24-31)
    output = tmp_path / f"out{suffix}"
    with pytest.raises(TypeError, match="row 25"):
        score_file(spec, write_jsonl(tmp_path / "broken.jsonl", broken), output, batch_size=8)
    fixed = write_jsonl(tmp_path / "rows.jsonl", rows)
    summary = score_file(spec, fixed, output, batch_size=8, progress=None)
    assert (summary["skipped"], summary["scored"]) == (24, 16)
    reference = tmp_path / f"reference{suffix}"
    score_file(spec, fixed, reference, batch_size=8, progress=None)
    assert list(read_rows(output)) == list(read_rows(reference))
    assert len(list(read_rows(output))) == 40
    again = score_file(spec, fixed, output, batch_size=8, progress=None)
    assert (again["skipped"], again["scored"]) == (40, 0)


def test_a_torn_last_jsonl_line_is_rescored(reranker_path: str, tmp_path: Path) -> None:
    """A line cut off by a kill is dropped and its row scored again, never duplicated."""
    spec = ScoreSpec(model=reranker_path)
    source = write_jsonl(tmp_path / "rows.jsonl", corpus_rows(12))
    output = tmp_path / "out.jsonl"
    score_file(spec, source, output, batch_size=5, progress=None)
    complete = output.read_text(encoding="utf-8")
    lines = complete.splitlines(keepends=True)
    output.write_text("".join(lines[:7]) + lines[7][:20], encoding="utf-8")
    summary = score_file(spec, source, output, batch_size=5, progress=None)
    assert summary["skipped"] == 7
    assert output.read_text(encoding="utf-8") == complete


def test_csv_ids_stay_strings_and_parquet_equals_jsonl(reranker_path: str, tmp_path: Path) -> None:
    """CSV keeps '0007' as written; every output format holds the same values."""
    pytest.importorskip("pyarrow")
    rows = corpus_rows(9)
    source = tmp_path / "rows.csv"
    with source.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    spec = ScoreSpec(model=reranker_path)
    score_file(spec, source, tmp_path / "out.jsonl", progress=None)
    score_file(spec, source, tmp_path / "out.parquet", progress=None)
    as_jsonl = list(read_rows(tmp_path / "out.jsonl"))
    assert [r["doc_id"] for r in as_jsonl] == [f"{i:04d}" for i in range(9)]
    assert as_jsonl == list(read_rows(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet.parts").exists()


def test_the_command_line_prints_a_summary_and_progress(
    reranker_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`crag-integrations score`: progress (pairs/s, ETA) on stderr, the JSON summary on
    stdout; the corpus module never builds a Ray scorer itself."""
    source = write_jsonl(tmp_path / "rows.jsonl", corpus_rows(6))
    output = str(tmp_path / "o.jsonl")
    assert (
        main(["score", "--model", reranker_path, "--input", str(source), "--output", output]) == 0
    )
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["rows"] == 6 and summary["scored"] == 6
    assert "pairs/s" in captured.err and "ETA" in captured.err
    parser = argparse.ArgumentParser()
    add_score_arguments(parser)
    args = parser.parse_args(["--model", reranker_path, "--input", str(source), "--output", output])
    args.ray = "auto"  # the Ray scorer comes from the caller: this module never imports Ray
    with pytest.raises(ValueError, match="RayRowScorer"):
        score_from_args(args)


def test_bad_inputs_fail_loudly_and_name_the_culprit(
    reranker_path: str, grader_path: str, tmp_path: Path
) -> None:
    """Missing columns, clashing columns, bad options and unknown formats raise clearly."""
    spec = ScoreSpec(model=reranker_path)
    rows = [{"query": "q", "passage": "t"}]
    with pytest.raises(KeyError, match="'text'"):
        score_file(spec, write_jsonl(tmp_path / "a.jsonl", rows), tmp_path / "o.jsonl")
    clash = [{"query": "q", "text": "t", "score": 1}]
    with pytest.raises(ValueError, match="score"):
        score_file(spec, write_jsonl(tmp_path / "b.jsonl", clash), tmp_path / "o2.jsonl")
    with pytest.raises(ValueError, match=r"\.jsonl, \.parquet or \.csv"):
        score_file(spec, tmp_path / "b.jsonl", tmp_path / "o.txt")
    with pytest.raises(ValueError, match="threshold"):
        ScoreSpec(model=reranker_path, role="rerank", threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        ScoreSpec(model=grader_path, role="grade", threshold=1.5)
    with pytest.raises(ValueError, match="role"):
        ScoreSpec(model=grader_path, role="summarise")  # type: ignore[arg-type]
    longer = write_jsonl(tmp_path / "c.jsonl", [{"query": "q", "text": "t"}] * 3)
    score_file(spec, longer, tmp_path / "o3.jsonl", progress=io.StringIO())
    with pytest.raises(ValueError, match="not a previous run"):
        score_file(spec, write_jsonl(tmp_path / "d.jsonl", rows[:0]), tmp_path / "o3.jsonl")


def test_engine_config_models_are_accepted(reranker_path: str) -> None:
    """A spec can carry a full EngineConfig (device, window length, ...)."""
    spec = ScoreSpec(model=EngineConfig(model=reranker_path, device="cpu", max_length=64))
    assert score_columns(spec, ["q"], ["t"])["num_windows"] == [1]
