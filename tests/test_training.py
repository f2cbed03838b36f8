"""Training and evaluation end to end on tiny random checkpoints and a handful of rows."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crag_integrations import EngineConfig, EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.cli import main
from crag_integrations.errors import IncompatibleModelError
from crag_integrations.evaluation import RankingQuery
from crag_integrations.testing import save_tiny_checkpoint
from crag_integrations.training import (
    evaluate_grader,
    evaluate_highlighter,
    evaluate_reranker,
    load_rows,
    predict_labels,
    predict_spans,
    score_pairs,
    train_grader,
    train_highlighter,
    train_reranker,
)

PAIRS = [
    ("what causes rain", "Rain forms when water vapor in the atmosphere condenses."),
    ("where is the eiffel tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris."),
    ("capital of japan", "The capital of Japan is Tokyo, which is also its largest city."),
    ("what is photosynthesis", "Photosynthesis converts light energy into chemical energy."),
    ("what does a reranker do", "A reranker sorts retrieved chunks so the relevant come first."),
    ("what produces atp", "The mitochondria is the powerhouse of the cell and produces ATP."),
]
FAST = {"epochs": 1.0, "batch_size": 4, "show_progress": False, "seed": 3}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT with a fast tokenizer, used as every trainer's starting point."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("base") / "bert", num_labels=1, seed=5)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reranker_bce_mines_hard_negatives_and_saves_a_plain_checkpoint(
    base: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    rows = [{"query": q, "positive": d} for q, d in PAIRS]
    summary = train_reranker(
        rows, base, tmp_path / "reranker", hard_negatives=2, bi_encoder=base, **FAST
    )
    assert summary.details["negatives"] > 0
    assert summary.details["pos_weight"] == pytest.approx(
        summary.details["negatives"] / summary.details["positives"], abs=1e-3
    )
    assert summary.num_steps >= 1
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reranker")
    assert model.config.num_labels == 1


def test_reranker_bce_without_negatives_says_how_to_get_them(base: Path, tmp_path: Path) -> None:
    rows = [{"query": q, "positive": d} for q, d in PAIRS]
    with pytest.raises(ValueError, match="hard_negatives"):
        train_reranker(rows, base, tmp_path / "r", **FAST)


def test_reranker_distillation_from_teacher_then_evaluation_on_a_ranking(
    base: Path, tmp_path: Path
) -> None:
    docs = [d for _, d in PAIRS]
    rows = [
        {"query": q, "documents": docs, "labels": [float(d == pos) for d in docs]}
        for q, pos in PAIRS
    ]
    summary = train_reranker(
        rows,
        base,
        tmp_path / "distilled",
        objective="distill",
        bi_encoder=base,
        label_boost=2.0,
        **FAST,
    )
    assert summary.details["lists"] == len(PAIRS)
    assert summary.details["candidates"] == len(PAIRS) * len(docs)
    queries = [
        RankingQuery(f"q{i}", q, tuple(f"d{j}" for j in range(len(docs))), tuple(docs))
        for i, (q, _) in enumerate(PAIRS)
    ]
    qrels = {f"q{i}": {f"d{i}": 2} for i in range(len(PAIRS))}
    metrics = evaluate_reranker(tmp_path / "distilled", queries, qrels, device="cpu")
    assert metrics.num_queries == len(PAIRS)
    assert 0.0 <= metrics.ndcg <= 1.0 and 0.0 < metrics.mrr <= 1.0


def test_grader_with_named_labels_and_balanced_weights_from_csv(base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    csv_path = tmp_path / "grades.csv"
    lines = ["query,document,label"]
    for i, (q, d) in enumerate(PAIRS):
        lines.append(f'"{q}","{d}",{["yes", "no", "partial"][i % 3]}')
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = train_grader(
        csv_path,
        base,
        tmp_path / "grader",
        labels=["no", "partial", "yes"],
        class_weights="balanced",
        **FAST,
    )
    assert summary.details["class_weights"] == [1.0, 1.0, 1.0]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "grader")
    assert model.config.id2label == {0: "no", 1: "partial", 2: "yes"}
    metrics = evaluate_grader(tmp_path / "grader", csv_path, device="cpu")
    assert metrics.average == "macro" and metrics.support == len(PAIRS)


def test_highlighter_labels_follow_offsets_and_windows_cover_long_contexts(
    base: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from crag_integrations.training.highlighter import _token_windows

    tokenizer = AutoTokenizer.from_pretrained(base)
    context = " ".join(d for _, d in PAIRS)
    evidence = PAIRS[3][1]
    start = context.index(evidence)
    span = (start, start + len(evidence))
    windows = _token_windows(tokenizer, "photosynthesis", context, [span], 32, 8)
    assert len(windows) > 1
    labelled = {
        tokenizer.convert_ids_to_tokens(tid)
        for w in windows
        for tid, lab in zip(w["input_ids"], w["labels"], strict=True)
        if lab == 1
    }
    assert "photosynthesis" in labelled and "tokyo" not in labelled
    assert all(lab == -100 for w in windows for lab in w["labels"][:3])  # [CLS] + query + [SEP]

    rows = [
        {"query": q, "context": context, "spans": [[context.index(d), context.index(d) + len(d)]]}
        for q, d in PAIRS
    ] + [{"query": "unrelated question", "context": PAIRS[0][1], "spans": []}]
    data = _write_jsonl(tmp_path / "spans.jsonl", rows)
    summary = train_highlighter(data, base, tmp_path / "hl", max_length=48, stride=16, **FAST)
    assert summary.num_examples > len(rows)  # long contexts became several windows
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "hl")
    assert model.config.id2label == {0: "O", 1: "EVIDENCE"}
    metrics = evaluate_highlighter(
        tmp_path / "hl",
        data,
        threshold=0.0,
        min_span_chars=1,
        max_length=48,
        stride=16,
        device="cpu",
    )
    assert metrics.num_rows == len(rows)
    # threshold 0 marks every context token, so every gold word is found
    assert metrics.word_recall == 1.0 and metrics.word_precision < 1.0


def test_evaluation_reads_checkpoints_exactly_as_inference_does(highlighter_path: str) -> None:
    """predict_spans / score_pairs go through the shared engine: the roles' own results."""
    query = "where is the tower?"
    texts = [
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. " * 6,
        "Rain forms when water vapor condenses.",
    ]
    highlighter = EvidenceHighlighter(
        model=EngineConfig(model=highlighter_path, max_length=64),
        threshold=0.3,
        min_span_chars=1,
        merge_gap_chars=5,
        doc_stride=16,
    )
    expected = [[(s.start, s.end) for s in h.spans] for h in highlighter.highlight(query, texts)]
    got = predict_spans(
        highlighter_path,
        [query] * len(texts),
        texts,
        threshold=0.3,
        min_span_chars=1,
        merge_gap_chars=5,
        max_length=64,
        stride=16,
        device="cpu",
    )
    assert got == expected


def test_reranker_evaluation_scores_are_the_rerankers_scores(reranker_path: str) -> None:
    """score_pairs equals Reranker.score, windows included (no silent truncation)."""
    texts = ["Rain forms when water vapor condenses. " * 30, "Tokyo is the capital of Japan."]
    expected = Reranker(model=EngineConfig(model=reranker_path, max_length=64)).score(
        "rain?", texts
    )
    got = score_pairs(reranker_path, ["rain?"] * 2, texts, max_length=64, device="cpu")
    assert got == pytest.approx(expected, abs=1e-5)


def test_highlighter_trains_when_a_long_query_leaves_less_room_than_the_stride(
    base: Path, tmp_path: Path
) -> None:
    """A 40-word query at max_length=64 leaves 21 tokens of text: stride 32 is clamped, as at
    inference (the tokenizer used to panic: "stride must be strictly less than max_len")."""
    query = " ".join(["what"] + ["rain"] * 39)
    context = "Rain forms when water vapor in the atmosphere condenses. " * 8
    rows = [{"query": query, "context": context, "spans": [[0, 56]]}]
    summary = train_highlighter(
        rows, base, tmp_path / "hl", max_length=64, stride=32, max_steps=2, **FAST
    )
    assert summary.num_steps == 2 and summary.num_examples > 1


def test_highlighter_training_refuses_a_query_that_leaves_no_room(
    base: Path, tmp_path: Path
) -> None:
    rows = [{"query": "rain " * 80, "context": "Rain falls.", "spans": []}]
    with pytest.raises(ValueError, match=r"row 0: The query is .* no room"):
        train_highlighter(rows, base, tmp_path / "hl", max_length=64, **FAST)


def test_predict_spans_defaults_are_the_highlighters() -> None:
    """'Exactly as EvidenceHighlighter' includes the defaults (stride is its doc_stride)."""
    role = {f.name: f.default for f in dataclasses.fields(EvidenceHighlighter)}
    params = inspect.signature(predict_spans).parameters
    for name in ("threshold", "merge_gap_chars", "min_span_chars", "max_length"):
        assert params[name].default == role[name], name
    assert params["stride"].default == role["doc_stride"]


def test_pairs_of_many_queries_come_back_in_input_order_as_the_roles_score_them(
    checkpoints: dict[str, Path],
) -> None:
    """Pairs are grouped by query for the roles, then put back in the caller's order."""
    queries = ["rain?", "tower?", "rain?", "japan?", "tower?"]
    texts = [
        "Rain forms when water vapor condenses. " * 12,
        "The Eiffel Tower is in Paris.",
        "Tokyo is the capital of Japan.",
        "Tokyo is large.",
        "Photosynthesis converts light.",
    ]
    config = EngineConfig(model=str(checkpoints["bert-rerank"]), max_length=48)
    expected = [
        Reranker(model=config).score(q, [t])[0] for q, t in zip(queries, texts, strict=True)
    ]
    got = score_pairs(checkpoints["bert-rerank"], queries, texts, max_length=48, device="cpu")
    assert got == pytest.approx(expected, abs=1e-5)
    osmosis = EngineConfig(model=str(checkpoints["bert-osmosis"]), max_length=48)
    grader = RelevanceGrader(model=osmosis)
    labels = [grader.grade(q, [t])[0].label for q, t in zip(queries, texts, strict=True)]
    predicted = predict_labels(
        checkpoints["bert-osmosis"], queries, texts, max_length=48, device="cpu"
    )
    assert predicted == labels


def test_grader_evaluation_uses_the_graders_labels(reranker_path: str, tmp_path: Path) -> None:
    """A one-logit checkpoint is graded relevant/not_relevant as RelevanceGrader does; labels
    the grader cannot tell apart need relevant_labels for predict_labels."""
    rows = [
        {"query": q, "document": d, "label": ["not_relevant", "relevant"][i % 2]}
        for i, (q, d) in enumerate(PAIRS)
    ]
    metrics = evaluate_grader(reranker_path, rows, device="cpu")
    assert metrics.average == "binary" and metrics.support == len(PAIRS)
    three = save_tiny_checkpoint(
        tmp_path / "three", num_labels=3, id2label={0: "no", 1: "partial", 2: "yes"}, seed=4
    )
    with pytest.raises(IncompatibleModelError, match="relevant_labels"):
        predict_labels(three, ["rain?"], ["Rain falls."], device="cpu")
    labels = predict_labels(three, ["rain?"], ["Rain falls."], relevant_labels=["yes"])
    assert labels[0] in {"no", "partial", "yes"}


def test_evaluation_also_runs_from_inside_an_event_loop(reranker_path: str) -> None:
    """A notebook cell runs in an event loop; the sync evaluation functions still work there."""
    texts = ["Rain falls.", "Tokyo."]

    async def in_a_loop() -> list[float]:
        return score_pairs(reranker_path, ["rain?"] * 2, texts, device="cpu")

    expected = score_pairs(reranker_path, ["rain?"] * 2, texts, device="cpu")
    assert asyncio.run(in_a_loop()) == pytest.approx(expected, abs=1e-6)


def test_importing_training_loads_no_torch() -> None:
    """The trainers import torch, transformers and datasets only when they run."""
    code = (
        "import sys, crag_integrations.training as t;"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'datasets')"
        " if m in sys.modules];"
        "print(','.join(heavy) or 'none', len(t.__all__))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["none", "13"]


def test_reranker_scores_refuse_a_grader_instead_of_misreading_its_first_logit(
    checkpoints: dict[str, Path],
) -> None:
    """A two-label grader's logit 0 means 'not relevant': ranking by it would invert the run."""
    with pytest.raises(IncompatibleModelError, match=r"one-logit cross-encoder.*evaluate_grader"):
        score_pairs(checkpoints["bert-binary"], ["rain?"], ["Rain falls."], device="cpu")


def test_load_rows_reads_jsonl_csv_and_lists(tmp_path: Path) -> None:
    rows = [{"query": "q", "context": "c c", "spans": [[0, 1]]}]
    assert load_rows(_write_jsonl(tmp_path / "a.jsonl", rows)) == rows
    (tmp_path / "a.csv").write_text('query,context,spans\nq,c c,"[[0, 1]]"\n', encoding="utf-8")
    assert load_rows(tmp_path / "a.csv") == rows
    with pytest.raises(ValueError, match="unknown data file type"):
        load_rows(tmp_path / "a.txt")


def test_cli_trains_and_evaluates_a_grader(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"query": q, "document": d, "label": i % 2} for i, (q, d) in enumerate(PAIRS)]
    data = _write_jsonl(tmp_path / "g.jsonl", rows)
    out = tmp_path / "g"
    assert (
        main(
            [
                "train-grader",
                "--data",
                str(data),
                "--base-model",
                str(base),
                "--output-dir",
                str(out),
                "--batch-size",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate-grader",
                "--model",
                str(out),
                "--data",
                str(data),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["average"] == "binary" and result["support"] == len(PAIRS)


def test_cli_reports_a_missing_or_wrong_model_without_a_traceback(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"query": q, "document": d, "label": i % 2} for i, (q, d) in enumerate(PAIRS)]
    data = str(_write_jsonl(tmp_path / "g.jsonl", rows))
    missing = str(tmp_path / "no-such-model")
    assert main(["evaluate-grader", "--model", missing, "--data", data, "--quiet"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    spans = [{"query": "rain?", "context": "Rain falls.", "spans": []}]
    span_data = str(_write_jsonl(tmp_path / "h.jsonl", spans))
    reranker = str(checkpoints["bert-rerank"])
    status = main(["evaluate-highlighter", "--model", reranker, "--data", span_data, "--quiet"])
    assert status == 2
    error = capsys.readouterr().err
    assert "evaluate-highlighter: error:" in error and "token-classification" in error


def test_cli_reports_bad_data_in_one_line_with_status_2(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing data file, a wrong column or a broken JSON line: one line on stderr naming
    the problem, exit status 2, no traceback."""
    grader = str(checkpoints["bert-binary"])
    missing = str(tmp_path / "no-such-rows.jsonl")
    assert main(["evaluate-grader", "--model", grader, "--data", missing, "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "no-such-rows.jsonl" in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
    wrong = str(_write_jsonl(tmp_path / "wrong.jsonl", [{"question": "q", "passage": "p"}]))
    assert main(["evaluate-grader", "--model", grader, "--data", wrong, "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "missing" in error and "query" in error and len(error.strip().splitlines()) == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"query": "q", "document": "d", "label": 1}\n{not json\n', encoding="utf-8")
    assert main(["evaluate-grader", "--model", grader, "--data", str(broken), "--quiet"]) == 2
    assert "line 2" in capsys.readouterr().err


def test_cli_quiet_silences_the_weight_loading_bar(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """--quiet leaves stderr free of the transformers weight-loading bar that a run without
    it prints (so this test can tell the two apart)."""
    import os
    import subprocess
    import sys

    rows = [{"query": q, "document": d, "label": i % 2} for i, (q, d) in enumerate(PAIRS)]
    data = str(_write_jsonl(tmp_path / "g.jsonl", rows))
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    command = [sys.executable, "-m", "crag_integrations.cli", "evaluate-grader"]
    command += ["--model", str(checkpoints["bert-binary"]), "--data", data]
    loud = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    quiet = subprocess.run(
        [*command, "--quiet"], capture_output=True, text=True, env=env, timeout=300
    )
    assert loud.returncode == quiet.returncode == 0, (loud.stderr, quiet.stderr)
    assert "Loading weights" in loud.stderr
    assert "Loading weights" not in quiet.stderr


def test_the_recipe_caps_lists_with_known_positives_first(
    repo_script: Callable[[str], Any],
) -> None:
    """``cap_lists``: positives first, the rest sampled in list order, short lists untouched."""
    recipe = repo_script("scripts/train_starter_models.py")
    docs = [f"d{i}" for i in range(10)]
    lists = [
        {"query": "q0", "documents": docs, "labels": [float(i in (7, 2)) for i in range(10)]},
        {"query": "q1", "documents": docs[:3], "labels": [1.0, 0.0, 0.0]},
        {"query": "q2", "documents": docs, "labels": [1.0] * 6 + [0.0] * 4},
        {"query": "q3", "documents": docs, "labels": [0.0] * 10},
    ]
    original = json.dumps(lists)
    capped = recipe.cap_lists(lists, None, 4, seed=1)
    assert json.dumps(lists) == original  # the caller's lists are not changed
    first = capped[0]
    assert len(first["documents"]) == 4 and {"d2", "d7"} <= set(first["documents"])
    assert first["documents"] == sorted(first["documents"], key=docs.index)  # list order
    assert [first["labels"][first["documents"].index(d)] for d in ("d2", "d7")] == [1.0, 1.0]
    assert sum(first["labels"]) == 2
    assert capped[1] == lists[1]  # already short
    assert capped[2]["documents"] == docs[:4] and capped[2]["labels"] == [1.0] * 4
    assert len(capped[3]["documents"]) == 4 and sum(capped[3]["labels"]) == 0
    assert recipe.cap_lists(lists, 2, None, seed=1) == lists[:2]  # no size: only the count
    assert recipe.cap_lists(lists, None, 4, seed=1) == capped  # seeded
