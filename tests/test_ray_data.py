"""Ray Data corpus scoring: parity with the local path for every role, the `score --ray`
path, and an actor killed mid-job (every row scored exactly once).

One local Ray instance (2 CPUs, no dashboard) for the module, shut down at its end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crag_integrations.corpus import (
    ScoreSpec,
    add_score_arguments,
    read_rows,
    score_columns,
    score_file,
    score_from_args,
)

# Ray's own modules trip deprecation warnings of pydantic and others when imported.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    pytest.importorskip("pyarrow")
    from crag_integrations.ray import RayRowScorer, score_dataset, write_scores

pytestmark = [
    pytest.mark.allow_hosts(["127.0.0.1"]),
    pytest.mark.timeout(300),
    # Ray and its dependencies warn about their own internals on import and shutdown.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

QUERIES = ["what causes rain?", "where is the eiffel tower?", "how do plants make food?"]
TEXTS = [
    "Rain forms when water vapour condenses into droplets.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Photosynthesis converts light into chemical energy.",
    "Tokyo is the capital of Japan.",
]


def corpus_rows(count: int) -> list[dict[str, Any]]:
    return [
        {
            "doc_id": f"d{i:05d}",
            "qid": i % len(QUERIES),
            "query": QUERIES[i % len(QUERIES)],
            "text": f"{TEXTS[i % len(TEXTS)]} ({i})",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray instance with 2 CPUs, only for this module."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray puts sockets here
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")  # no token file in the user's home
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp_dir,
        )
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        try:
            yield
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


def expected_rows(spec: ScoreSpec, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The local path's rows, by doc_id."""
    columns = score_columns(spec, [r["query"] for r in rows], [r["text"] for r in rows])
    return {
        row["doc_id"]: {**row, **{name: columns[name][i] for name in spec.output_columns}}
        for i, row in enumerate(rows)
    }


def assert_rows_match(got: list[dict[str, Any]], want: dict[str, dict[str, Any]]) -> None:
    assert sorted(r["doc_id"] for r in got) == sorted(want)  # every row, exactly once
    for row in got:
        reference = want[row["doc_id"]]
        assert list(row) == list(reference)
        for key, value in reference.items():
            if isinstance(value, float):
                # float32 sums depend on how rows were padded into batches (measured up to
                # 1.3e-6 relative on logits), so batch-composition-free equality is 1e-5.
                assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
            elif key in ("distribution", "spans"):
                assert json.loads(row[key]) == pytest.approx(json.loads(value), abs=1e-6) or (
                    [(s["start"], s["end"]) for s in json.loads(row[key])]
                    == [(s["start"], s["end"]) for s in json.loads(value)]
                )
            else:
                assert row[key] == value, key


def test_reranking_a_dataset_matches_the_local_path(cluster: None, reranker_path: str) -> None:
    """Two engine actors, every id column kept, scores equal to local scoring."""
    spec = ScoreSpec(model=reranker_path)
    rows = corpus_rows(90)
    scored = score_dataset(
        ray.data.from_items(rows, override_num_blocks=6),
        spec,
        actors=2,
        batch_size=16,
        num_cpus=0.5,
    )
    assert_rows_match(scored.take_all(), expected_rows(spec, rows))


@pytest.mark.parametrize("role", ["grade", "highlight"])
def test_grading_and_highlighting_a_dataset_match_the_local_path(
    cluster: None, role: str, grader_path: str, highlighter_path: str, tmp_path: Path
) -> None:
    """The other roles' columns (JSON-encoded nested values included) equal local ones,
    also after a Parquet round trip."""
    model = grader_path if role == "grade" else highlighter_path
    spec = ScoreSpec(model=model, role=role)  # type: ignore[arg-type]
    rows = corpus_rows(30)
    scored = score_dataset(ray.data.from_items(rows), spec, actors=1, num_cpus=0.5)
    write_scores(scored, str(tmp_path / "scored.parquet"))
    back = ray.data.read_parquet(str(tmp_path / "scored.parquet")).take_all()
    assert_rows_match(back, expected_rows(spec, rows))


def test_the_score_command_on_ray_writes_what_the_local_run_writes(
    cluster: None, reranker_path: str, tmp_path: Path
) -> None:
    """`score --ray` output equals the local output row for row, in input order."""
    rows = corpus_rows(40)
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = ScoreSpec(model=reranker_path)
    score_file(spec, source, tmp_path / "local.jsonl", batch_size=16, progress=None)
    parser = argparse.ArgumentParser()
    add_score_arguments(parser)
    args = parser.parse_args(
        ["--model", reranker_path, "--input", str(source), "--output", str(tmp_path / "ray.jsonl"),
         "--batch-size", "16", "--ray", "auto", "--quiet"]
    )  # fmt: skip
    summary = score_from_args(args, scorer=RayRowScorer.from_args(args))
    assert summary["scored"] == 40
    local = list(read_rows(tmp_path / "local.jsonl"))
    on_ray = list(read_rows(tmp_path / "ray.jsonl"))
    assert [r["doc_id"] for r in on_ray] == [r["doc_id"] for r in rows]
    assert_rows_match(on_ray, {r["doc_id"]: r for r in local})


def _scoring_actor_pids() -> list[int]:
    actors = ray._private.state.actors()
    return [
        int(a["Pid"])
        for a in actors.values()
        if a["State"] == "ALIVE" and "_BatchScorer" in a["ActorClassName"] and a["Pid"]
    ]


@pytest.mark.slow
def test_an_actor_killed_mid_job_loses_and_duplicates_nothing(
    cluster: None, reranker_path: str
) -> None:
    """SIGKILL one of two engine actors while batches stream out: the job finishes and
    every row is there exactly once, with its right score."""
    spec = ScoreSpec(model=reranker_path)
    rows = corpus_rows(240)
    scored = score_dataset(
        ray.data.from_items(rows, override_num_blocks=24),
        spec,
        actors=2,
        batch_size=10,
        num_cpus=0.5,
        max_tasks_in_flight_per_actor=2,
    )
    got: list[dict[str, Any]] = []
    killed: list[int] = []
    begin = time.monotonic()
    for batch in scored.iter_batches(batch_size=10, batch_format="pyarrow"):
        got.extend(batch.to_pylist())
        if not killed and len(got) >= 30:
            pids = _scoring_actor_pids()
            assert pids, "no scoring actor found to kill"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
    assert killed and time.monotonic() - begin < 240
    assert len(got) == len(rows)
    assert_rows_match(got, expected_rows(spec, rows))
