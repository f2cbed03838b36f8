"""The ONNX Runtime back-end inside the engine: ``EngineConfig(backend="onnx")``.

The roles on ``backend="onnx"`` give the torch engine's results within 1e-5 for every head
and architecture; one session serves every batch shape; per-pair isolation, out-of-memory
splitting and coalescing behave the same on both back-ends; int8 runs through the engine
and is close but not exact; configurations are validated; the torch path imports neither
onnx nor onnxruntime.

Faults are injected below the engine, as in ``test_engine_faults.py``: the torch model's
``forward`` or the ONNX model's ``run`` is wrapped, and the engine code under test runs
unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crag_integrations import (
    EngineConfig,
    EvidenceHighlighter,
    RelevanceGrader,
    Reranker,
    get_engine,
    release_engines,
)
from crag_integrations.engine.cross_encoder_engine import CrossEncoderEngine
from crag_integrations.engine.onnx import OnnxModel, is_onnx_out_of_memory, resolve_onnx_device
from crag_integrations.engine.requests import Request
from crag_integrations.types import SequenceScores

ort = pytest.importorskip("onnxruntime")

ARCHITECTURES = ("bert", "modernbert", "deberta-v2")
BACKENDS = ("torch", "onnx")
#: fp32 ONNX against torch (the issue's parity bar).
PARITY = 1e-5
QUERY = "what causes rain?"
TEXTS = (
    "Rain forms when water vapor in the atmosphere condenses into droplets. It falls.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose. "
    "Plants need it. " * 4,
    "The capital of Japan is Tokyo, which is also its largest city.",
    "",
    "東京は日本の首都です。 Café naïve résumé — emoji 🚀",
)
POISON = "\u2622 reactor core"  # tokenizes to [UNK], which the simulated device refuses


@pytest.fixture(scope="module")
def tiny(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """This module's own copies of the session checkpoints.

    An ONNX engine caches its export next to a writable checkpoint (``.crag_onnx/``); the
    copies keep those folders out of the checkpoints other modules use.
    """
    root = tmp_path_factory.mktemp("onnx-engine")
    return {
        name: str(shutil.copytree(path, root / name, ignore=shutil.ignore_patterns(".crag_onnx")))
        for name, path in checkpoints.items()
    }


@pytest.fixture
def released() -> Iterator[None]:
    """Every engine released after the test (wrapped devices do not outlive it)."""
    yield
    release_engines()


def _config(path: str, backend: str, **overrides: Any) -> EngineConfig:
    return EngineConfig(model=path, backend=backend, cache_size=0, **overrides)  # type: ignore[arg-type]


def _logits(results: list[SequenceScores]) -> list[tuple[float, ...]]:
    return [r.window_logits[0] for r in results]


def _exports(path: str) -> list[Path]:
    root = Path(path) / ".crag_onnx"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".staging-"))


# ------------------------------------------------------------------------ configuration


def test_backend_and_quantize_are_validated_with_what_to_do_instead() -> None:
    """Impossible combinations fail when the config is built, naming the fix."""
    with pytest.raises(ValueError, match="backend must be 'torch' or 'onnx'"):
        EngineConfig(model="m", backend="openvino")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quantize must be None or 'int8'"):
        EngineConfig(model="m", backend="onnx", quantize="int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs backend='onnx'"):
        EngineConfig(model="m", quantize="int8")
    with pytest.raises(ValueError, match=r"CPU only.*device='cpu'"):
        EngineConfig(model="m", backend="onnx", quantize="int8", device="cuda")
    with pytest.raises(ValueError, match=r"'cpu', 'cuda\[:N\]' or 'auto'"):
        EngineConfig(model="m", backend="onnx", device="mps")
    with pytest.raises(ValueError, match="float32 graph"):
        EngineConfig(model="m", backend="onnx", dtype="float16")
    with pytest.raises(ValueError, match="compile=True is for backend='torch'"):
        EngineConfig(model="m", backend="onnx", compile=True)
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert EngineConfig(model="m", backend="onnx", device=device).backend == "onnx"
    config = EngineConfig(model="m", backend="onnx", quantize="int8", device="cpu")
    assert "backend='onnx'" in repr(config) and "quantize='int8'" in repr(config)
    assert "backend='torch'" in repr(EngineConfig(model="m"))


def test_auto_devices_and_out_of_memory_errors_of_the_onnx_backend() -> None:
    """``auto`` is the CPU for int8 (CPU kernels); explicit devices stay as given. Only
    onnxruntime's own allocation failures count as out of memory."""
    assert resolve_onnx_device("auto", quantize="int8") == "cpu"
    assert resolve_onnx_device("cuda:1") == "cuda:1"
    expected = (
        "cuda"
        if torch.cuda.is_available() and "CUDAExecutionProvider" in (ort.get_available_providers())
        else "cpu"
    )
    assert resolve_onnx_device("auto") == expected
    runtime_error = ort.capi.onnxruntime_pybind11_state.RuntimeException
    assert is_onnx_out_of_memory(runtime_error("BFCArena: Failed to allocate memory for buffer"))
    assert is_onnx_out_of_memory(runtime_error("CUDA failure 2: out of memory"))
    assert not is_onnx_out_of_memory(runtime_error("Invalid rank for input: input_ids"))
    assert not is_onnx_out_of_memory(ValueError("out of memory"))


def test_torch_onnx_and_int8_engines_of_one_checkpoint_are_three_loaded_models(
    tiny: dict[str, str], released: None
) -> None:
    """The back-end is part of the load key; equal configs still share one model."""
    path = tiny["bert-rerank"]
    engines = [
        get_engine(path, backend="torch"),
        get_engine(path, backend="onnx"),
        get_engine(path, backend="onnx", quantize="int8"),
    ]
    for engine in engines:
        engine.load()
    runners = {id(engine._runner) for engine in engines}
    assert len(runners) == 3
    assert [e._runner.loaded.backend for e in engines] == ["torch", "onnx", "onnx"]
    assert isinstance(engines[1]._runner.loaded.model, OnnxModel)
    assert engines[2]._runner.loaded.model.quantize == "int8"
    assert [e.device for e in engines] == ["cpu", "cpu", "cpu"]  # auto on this machine
    assert engines[1].dtype == engines[2].dtype == "float32"
    twin = get_engine(path, backend="onnx", max_length=64, cache_size=0)
    assert twin._runner is engines[1]._runner and twin.load_count == 1


def test_the_session_is_sized_like_torch_on_the_cpu_provider(
    tiny: dict[str, str], released: None
) -> None:
    """One session per loaded model, CPU provider by default, torch's intra-op threads."""
    engine = get_engine(tiny["bert-binary"], backend="onnx")
    model = engine._runner.loaded.model
    assert model.providers == ("CPUExecutionProvider",)
    options = model._session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()
    assert model.source in ("exported", "cached")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this onnxruntime has the CUDA provider",
)
def test_cuda_without_onnxruntime_gpu_says_what_to_install(
    tiny: dict[str, str], released: None
) -> None:
    """device='cuda' on a CPU-only onnxruntime fails at load with the remedy."""
    engine = get_engine(tiny["bert-rerank"], backend="onnx", device="cuda")
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        engine.load()


def test_a_hub_model_exports_from_its_snapshot_into_the_user_cache(
    tiny: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    released: None,
) -> None:
    """A hub id is exported from its snapshot folder; the export goes under XDG_CACHE_HOME
    (snapshot folders belong to the hub client) and matches the torch engine."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-rerank"
    shutil.copytree(tiny["modernbert-rerank"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    engine = get_engine(
        "org/tiny-rerank", backend="onnx", cache_dir=str(tmp_path / "hub"), cache_size=0
    )
    pairs = [(QUERY, text) for text in TEXTS]
    got = engine.score_pairs(pairs)
    model = engine._runner.loaded.model
    assert model.source == "exported"
    assert model.path.is_relative_to(tmp_path / "xdg" / "crag_integrations" / "onnx")
    assert not (repo / "snapshots" / commit / ".crag_onnx").exists()
    expected = get_engine(tiny["modernbert-rerank"], cache_size=0).score_pairs(pairs)
    np.testing.assert_allclose(_logits(got), _logits(expected), rtol=0, atol=PARITY)


def test_the_torch_path_imports_neither_onnx_nor_onnxruntime(tiny: dict[str, str]) -> None:
    """Scoring on the default back-end loads none of the [onnx] extra."""
    code = (
        "import sys; from crag_integrations import get_engine; "
        "get_engine(sys.argv[1], device='cpu').score_pairs([('q', 'a text')]); "
        "print(sorted({'onnxruntime', 'onnx'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, tiny["bert-rerank"]],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------ parity of the roles


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reranker_on_onnx_matches_torch(tiny: dict[str, str], arch: str) -> None:
    """Scores within 1e-5 and the same order, windowed long texts included."""
    path = tiny[f"{arch}-rerank"]
    texts = [*TEXTS, " ".join(TEXTS) * 6]  # the last one spans several 64-token windows
    results = {}
    for backend in BACKENDS:
        reranker = Reranker(model=_config(path, backend, max_length=64, stride=16))
        results[backend] = (reranker.score_texts(QUERY, texts), reranker.rank(QUERY, texts))
    (torch_scores, torch_ranked), (onnx_scores, onnx_ranked) = results["torch"], results["onnx"]
    assert [r.num_windows for r in onnx_scores] == [r.num_windows for r in torch_scores]
    assert torch_scores[-1].num_windows > 1
    np.testing.assert_allclose(
        [r.score for r in onnx_scores], [r.score for r in torch_scores], rtol=0, atol=PARITY
    )
    assert [r.index for r in onnx_ranked] == [r.index for r in torch_ranked]


@pytest.mark.parametrize("head", ["rerank", "binary", "osmosis"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_grader_on_onnx_matches_torch(tiny: dict[str, str], arch: str, head: str) -> None:
    """One, two and five labels: the same labels and verdicts, probabilities within 1e-5."""
    path = tiny[f"{arch}-{head}"]
    grades = {
        backend: RelevanceGrader(model=_config(path, backend)).grade(QUERY, list(TEXTS))
        for backend in BACKENDS
    }
    expected, got = grades["torch"], grades["onnx"]
    assert [g.label for g in got] == [g.label for g in expected]
    assert [g.relevant for g in got] == [g.relevant for g in expected]
    np.testing.assert_allclose(
        [g.probability for g in got], [g.probability for g in expected], rtol=0, atol=PARITY
    )
    for mine, reference in zip(got, expected, strict=True):
        assert mine.distribution.keys() == reference.distribution.keys()
        np.testing.assert_allclose(
            list(mine.distribution.values()),
            list(reference.distribution.values()),
            rtol=0,
            atol=PARITY,
        )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_highlighter_on_onnx_matches_torch(tiny: dict[str, str], arch: str) -> None:
    """The token head: the same span bounds, span and sentence scores within 1e-5."""
    path = tiny[f"{arch}-token"]
    texts = [*TEXTS, " ".join(TEXTS) * 4]
    highlights = {
        backend: EvidenceHighlighter(
            model=_config(path, backend),
            max_length=96,
            doc_stride=24,
            threshold=0.5,
            min_span_chars=1,
            return_sentence_scores=True,
        ).highlight(QUERY, texts)
        for backend in BACKENDS
    }
    expected, got = highlights["torch"], highlights["onnx"]
    assert expected[-1].num_windows > 1
    assert sum(len(h.spans) for h in expected) > 0  # the comparison is not vacuous
    for mine, reference in zip(got, expected, strict=True):
        assert [(s.start, s.end) for s in mine.spans] == [(s.start, s.end) for s in reference.spans]
        assert mine.trimmed_text == reference.trimmed_text
        np.testing.assert_allclose(
            [s.score for s in mine.spans], [s.score for s in reference.spans], rtol=0, atol=PARITY
        )
        assert mine.sentences is not None and reference.sentences is not None
        np.testing.assert_allclose(
            [s.score for s in mine.sentences],
            [s.score for s in reference.sentences],
            rtol=0,
            atol=PARITY,
        )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_token_scores_on_onnx_match_torch(tiny: dict[str, str], arch: str) -> None:
    """The engine's raw token probabilities, merged across windows, within 1e-5."""
    path = tiny[f"{arch}-token"]
    pairs = [(QUERY, text) for text in [*TEXTS, " ".join(TEXTS) * 3]]
    scores = {
        backend: get_engine(_config(path, backend, max_length=48, stride=12)).token_scores(pairs)
        for backend in BACKENDS
    }
    for mine, reference in zip(scores["onnx"], scores["torch"], strict=True):
        assert mine.offsets == reference.offsets
        np.testing.assert_allclose(mine.probabilities, reference.probabilities, rtol=0, atol=PARITY)


# -------------------------------------------------------------------------- shapes


def _single_token_words(engine: CrossEncoderEngine, count: int) -> list[str]:
    """``count`` distinct words that are one token each, alone and in a row."""
    tokenizer = engine._runner.loaded.tokenizer
    words = []
    for word in sorted(tokenizer.get_vocab()):
        if word.isalpha() and word.isascii():
            ids = tokenizer(f"{word} {word} {word}", add_special_tokens=False)["input_ids"]
            if len(ids) == 3:
                words.append(word)
        if len(words) == count:
            return words
    raise AssertionError(f"fewer than {count} single-token words in the tiny tokenizer")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_session_serves_batches_1_to_64_and_lengths_8_to_the_limit(
    tiny: dict[str, str], arch: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """Every batch shape the engine makes runs on the one exported graph: no re-export,
    no second session, torch's logits at every shape."""
    path = tiny[f"{arch}-rerank"]
    engine = get_engine(path, backend="onnx", cache_size=0, token_budget=64 * 512)
    reference = get_engine(path, cache_size=0, token_budget=64 * 512)
    model = engine._runner.loaded.model
    shapes: list[tuple[int, int]] = []
    original = model.run

    def spy(input_ids: np.ndarray, *args: Any) -> np.ndarray:
        shapes.append(input_ids.shape)
        return np.asarray(original(input_ids, *args))

    monkeypatch.setattr(model, "run", spy)
    exports = _exports(path)
    graph_written = model.path.stat().st_mtime_ns
    limit = engine.model_max_length
    words = _single_token_words(engine, 65)
    filler, queries = words[0], words[1:]
    overhead = 1 + engine._runner.loaded.special_tokens_in_pair  # a one-token query
    for batch, length in [(1, 8), (64, 8), (3, 37), (64, 130), (1, limit), (6, limit)]:
        # Distinct pairs of one length: the engine computes equal pairs once.
        pairs = [(query, " ".join([filler] * (length - overhead))) for query in queries[:batch]]
        got = engine.score_pairs(pairs)
        np.testing.assert_allclose(
            _logits(got),
            _logits(reference.score_pairs(pairs)),
            rtol=0,
            atol=PARITY,
            err_msg=f"{batch}x{length}",
        )
        assert shapes[-1] == (batch, length)
    assert engine._runner.loaded.model is model and engine.load_count == 1
    assert _exports(path) == exports and model.path.stat().st_mtime_ns == graph_written


# ------------------------------------------------------- isolation, on both back-ends


class Device:
    """The runtime under one loaded model, with faults switched on by the test.

    Wraps the torch model's ``forward`` or the ONNX model's ``run``.

    Attributes:
        max_rows: Batches with more rows raise the back-end's out-of-memory error.
        poison: Batches holding this token id raise ``RuntimeError``.
        rows: Rows of every pass that ran to completion.
    """

    def __init__(self, engine: CrossEncoderEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        loaded = engine._runner.loaded
        self.backend = loaded.backend
        name = "run" if self.backend == "onnx" else "forward"
        self._original = getattr(loaded.model, name)
        self.max_rows: int | None = None
        self.poison: int | None = None
        self.rows: list[int] = []
        monkeypatch.setattr(loaded.model, name, self._call)

    def _out_of_memory(self, rows: int) -> BaseException:
        if self.backend == "onnx":
            # What ONNX Runtime raises when its arena cannot allocate a buffer.
            error: BaseException = ort.capi.onnxruntime_pybind11_state.RuntimeException(
                "Non-zero status code returned while running MatMul node. Status Message: "
                f"Failed to allocate memory for requested buffer (simulated: {rows} rows)"
            )
            return error
        return torch.OutOfMemoryError(f"CUDA out of memory (simulated: {rows} rows)")

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        input_ids = args[0] if self.backend == "onnx" else kwargs["input_ids"]
        rows = int(input_ids.shape[0])
        if self.max_rows is not None and rows > self.max_rows:
            raise self._out_of_memory(rows)
        if self.poison is not None and bool((input_ids == self.poison).any()):
            raise RuntimeError("device-side assert triggered (simulated)")
        output = self._original(*args, **kwargs)
        self.rows.append(rows)
        return output


def _calls(count: int) -> list[list[tuple[str, str]]]:
    return [
        [(f"question {i} about rain", TEXTS[(i + k) % 4]) for k in range(1 + i % 4)]
        for i in range(count)
    ]


def _in_threads(engine: CrossEncoderEngine, calls: list[list[tuple[str, str]]]) -> list[Any]:
    got: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def call(i: int) -> None:
        barrier.wait()
        try:
            got[i] = engine.score_pairs(calls[i])
        except Exception as exc:
            got[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    return got


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pair_the_runtime_fails_on_fails_alone(
    tiny: dict[str, str], backend: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """All callers' windows share one batch; the runtime fails on one pair. That caller gets
    the error naming its pair, every other caller its single-call result."""
    path = tiny["bert-rerank"]
    calls = _calls(8)
    alone = get_engine(_config(path, backend))
    expected = [alone.score_pairs(pairs) for pairs in calls]
    calls[5] = [*calls[5][:2], (calls[5][0][0], POISON)]
    engine = get_engine(_config(path, backend, max_wait_ms=300, token_budget=10**9))
    device = Device(engine, monkeypatch)
    device.poison = engine._runner.loaded.tokenizer.unk_token_id
    got = _in_threads(engine, calls)
    assert isinstance(got[5], RuntimeError)
    assert "pairs[2]" in str(got[5]) and "simulated" in str(got[5])
    for index, (mine, reference) in enumerate(zip(got, expected, strict=True)):
        if index != 5:
            np.testing.assert_allclose(_logits(mine), _logits(reference), atol=PARITY)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_out_of_memory_error_splits_the_batch_and_everyone_gets_results(
    tiny: dict[str, str], backend: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """A runtime that runs out of memory above 2 rows: batches are halved until they fit,
    concurrent callers all get correct results, and the lowered budget is in force."""
    path = tiny["bert-rerank"]
    calls = _calls(6)
    alone = get_engine(_config(path, backend))
    expected = [alone.score_pairs(pairs) for pairs in calls]
    engine = get_engine(_config(path, backend, max_wait_ms=200, token_budget=8192))
    device = Device(engine, monkeypatch)
    device.max_rows = 2
    got = _in_threads(engine, calls)
    for mine, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(_logits(mine), _logits(reference), atol=PARITY)
    assert engine.oom_splits >= 1 and max(device.rows) <= 2
    cap = engine.token_budget_cap
    assert cap is not None and cap < 8192


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_onnx_error_that_is_not_out_of_memory_is_not_split_for(
    tiny: dict[str, str], backend: str, monkeypatch: pytest.MonkeyPatch, released: None
) -> None:
    """Only the runtime's own allocation failure halves batches; other errors are narrowed
    to the failing pair without lowering the budget."""
    engine = get_engine(_config(tiny["bert-rerank"], backend, token_budget=8192))
    device = Device(engine, monkeypatch)
    device.poison = engine._runner.loaded.tokenizer.unk_token_id
    with pytest.raises(RuntimeError, match=r"pairs\[1\]"):
        engine.score_pairs([("q", TEXTS[0]), ("q", POISON), ("q", TEXTS[1])])
    assert engine.oom_splits == 0 and engine.token_budget_cap is None


# -------------------------------------------------------- coalescing, on both back-ends


@pytest.mark.parametrize("backend", BACKENDS)
def test_sixteen_threads_share_forward_passes_and_get_their_own_results(
    tiny: dict[str, str], backend: str, released: None
) -> None:
    """16 threads with different queries coalesce into one drain whose few forward passes
    (length-sorted under the budget) serve them all; each gets its single-call result."""
    path = tiny["modernbert-binary"]
    calls = _calls(16)
    alone = get_engine(_config(path, backend))
    expected = [alone.score_pairs(pairs) for pairs in calls]
    # The owner waits (up to 30 s) until the estimated tokens of all 16 requests arrived.
    budget = sum(Request("sequence", pairs, None, 0, 1).estimated_tokens for pairs in calls)
    engine = get_engine(_config(path, backend, max_wait_ms=30_000, token_budget=budget))
    engine.load()
    drains, passes = engine.drains, engine.forward_passes
    got = _in_threads(engine, calls)
    assert engine.drains - drains == 1
    assert engine.forward_passes - passes <= 3  # alone, each caller needs a pass of its own
    for mine, reference in zip(got, expected, strict=True):
        np.testing.assert_allclose(_logits(mine), _logits(reference), atol=PARITY)


@pytest.mark.parametrize("backend", BACKENDS)
def test_asyncio_tasks_coalesce_and_a_bad_text_fails_only_its_task(
    tiny: dict[str, str], backend: str, released: None
) -> None:
    """12 tasks on one loop share drains; the one with a lone surrogate gets a ValueError
    naming its pair, the others their single-call results."""
    path = tiny["deberta-v2-rerank"]
    calls = _calls(12)
    alone = get_engine(_config(path, backend))
    expected = [alone.score_pairs(pairs) for pairs in calls]
    calls[4] = [calls[4][0], (calls[4][0][0], "x \ud800 y")]
    engine = get_engine(_config(path, backend, max_wait_ms=300, token_budget=10**9))
    engine.load()
    drains = engine.drains

    async def main() -> list[Any]:
        return list(
            await asyncio.gather(*(engine.ascore_pairs(p) for p in calls), return_exceptions=True)
        )

    got = asyncio.run(main())
    assert engine.drains - drains < len(calls)
    assert isinstance(got[4], ValueError) and "pairs[1]" in str(got[4])
    for index, (mine, reference) in enumerate(zip(got, expected, strict=True)):
        if index != 4:
            np.testing.assert_allclose(_logits(mine), _logits(reference), atol=PARITY)


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_requests_from_many_threads_keep_their_own_offsets(
    tiny: dict[str, str], backend: str, released: None
) -> None:
    """Token probabilities coalesced across threads map onto each caller's own text."""
    path = tiny["bert-token"]
    requests = [[(f"query {i}", TEXTS[i % 4] * (1 + i % 3))] for i in range(12)]
    alone = get_engine(_config(path, backend))
    expected = [alone.token_scores(p) for p in requests]
    engine = get_engine(_config(path, backend, max_wait_ms=200))
    got: list[Any] = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def call(i: int) -> None:
        barrier.wait()
        got[i] = engine.token_scores(requests[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for mine, reference in zip(got, expected, strict=True):
        assert mine[0].offsets == reference[0].offsets
        np.testing.assert_allclose(mine[0].probabilities, reference[0].probabilities, atol=PARITY)


# --------------------------------------------------------------------------- int8


@pytest.mark.parametrize("name", ["bert-rerank", "modernbert-osmosis", "deberta-v2-token"])
def test_int8_runs_through_the_engine_close_but_not_exact(
    tiny: dict[str, str], name: str, released: None
) -> None:
    """int8 trades exact scores for speed: correlated with fp32, never identical."""
    path = tiny[name]
    pairs = [(f"{QUERY} {i}", TEXTS[i % len(TEXTS)] * (1 + i % 3)) for i in range(24)]
    outputs = {}
    for quantize in (None, "int8"):
        engine = get_engine(_config(path, "onnx", quantize=quantize))
        if name.endswith("token"):
            outputs[quantize] = np.concatenate(
                [np.ravel(s.probabilities) for s in engine.token_scores(pairs)]
            )
        else:
            outputs[quantize] = np.ravel([s.window_logits[0] for s in engine.score_pairs(pairs)])
        assert engine._runner.loaded.model.quantize == quantize
    exact, approximate = outputs[None], outputs["int8"]
    assert exact.shape == approximate.shape
    error = np.abs(approximate - exact).max()
    assert 1e-5 < error < 0.25 * max(np.abs(exact).max(), 1e-3)
    assert np.corrcoef(exact, approximate)[0, 1] > 0.95


def test_int8_scores_depend_on_the_batch_and_fp32_scores_do_not(
    tiny: dict[str, str], released: None
) -> None:
    """Documented: dynamic int8 quantises activations per forward pass, so batch-mates matter.

    ONNX Runtime's dynamic quantisation takes one scale per activation tensor, i.e. per batch
    (padding included), so a pair scored alone and the same pair scored among others differ;
    fp32 (torch and ONNX) gives a pair the same score whatever shares its batch.
    """
    path = tiny["bert-rerank"]
    pairs = [(f"{QUERY} {i}", (TEXTS[i % 4] + " ") * (1 + i % 5)) for i in range(12)]
    spread = {}
    for backend, quantize in (("torch", None), ("onnx", None), ("onnx", "int8")):
        engine = get_engine(_config(path, backend, quantize=quantize))
        together = np.ravel([s.window_logits[0] for s in engine.score_pairs(pairs)])
        alone = np.ravel([engine.score_pairs([pair])[0].window_logits[0] for pair in pairs])
        spread[quantize or backend] = float(np.abs(together - alone).max())
    assert spread["torch"] < PARITY and spread["onnx"] < PARITY
    assert spread["int8"] > 100 * PARITY


# ------------------------------------------------------- measuring a checkpoint on a back-end


def test_checkpoint_evaluation_runs_on_the_onnx_backend_with_torch_s_results(
    tiny: dict[str, str], released: None
) -> None:
    """``score_pairs`` / ``predict_labels`` / ``predict_spans`` take the engine's back-end."""
    from crag_integrations.evaluation.checkpoints import predict_labels, predict_spans, score_pairs

    queries = [QUERY] * len(TEXTS)
    texts = [t or "empty" for t in TEXTS]
    scores = {
        backend: score_pairs(tiny["bert-rerank"], queries, texts, backend=backend)  # type: ignore[arg-type]
        for backend in BACKENDS
    }
    np.testing.assert_allclose(scores["onnx"], scores["torch"], atol=PARITY)
    int8 = score_pairs(tiny["bert-rerank"], queries, texts, backend="onnx", quantize="int8")
    assert int8 != scores["onnx"] and np.corrcoef(int8, scores["onnx"])[0, 1] > 0.95
    labels = {
        backend: predict_labels(tiny["modernbert-binary"], queries, texts, backend=backend)  # type: ignore[arg-type]
        for backend in BACKENDS
    }
    assert labels["onnx"] == labels["torch"]
    spans = {
        backend: predict_spans(
            tiny["deberta-v2-token"],
            queries,
            texts,
            threshold=0.5,
            backend=backend,  # type: ignore[arg-type]
        )
        for backend in BACKENDS
    }
    assert spans["onnx"] == spans["torch"] and any(spans["torch"])


def test_the_cli_evaluates_on_the_backend_it_is_given(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], released: None
) -> None:
    from crag_integrations.cli import main

    rows = tmp_path / "grades.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps({"query": QUERY, "document": t or "empty", "label": i % 2})
            for i, t in enumerate(TEXTS)
        )
    )
    results = {}
    for flags in ([], ["--backend", "onnx"]):
        command = ["evaluate-grader", "--model", tiny["bert-binary"], "--data", str(rows)]
        assert main([*command, "--quiet", *flags]) == 0
        results[tuple(flags)] = json.loads(capsys.readouterr().out)
    assert results[("--backend", "onnx")] == results[()]
    # What would change nothing or cannot run is refused before any model work, status 2.
    for bad, message in (
        (["--quantize", "int8"], "--quantize int8 needs --backend onnx"),
        (["--backend", "torch", "--quantize", "int8"], "needs --backend onnx"),
        (["--backend", "onnx", "--quantize", "int8", "--device", "cuda"], "CPU only"),
        (["--backend", "onnx", "--device", "mps"], "use backend='torch'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate-grader", "--model", tiny["bert-binary"], "--data", str(rows), *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate-reranker", "--first-stage", "--backend", "onnx"])
    assert exit_info.value.code == 2 and "give --model" in capsys.readouterr().err


DATA_DIR = Path(
    os.environ.get("CRAG_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


@pytest.mark.skipif(
    not (DATA_DIR / "trec-dl19" / "qrels.txt").is_file(),
    reason=f"shared evaluation data not found at {DATA_DIR} (set CRAG_DATA_DIR)",
)
def test_the_int8_quality_study_runs_end_to_end_on_tiny_checkpoints(
    tiny: dict[str, str],
    tmp_path: Path,
    released: None,
    repo_script: Callable[[str], Any],
) -> None:
    """benchmarks/onnx_quality.py --quick: every role, every system, fp32 ONNX equal to torch."""
    from crag_integrations.testing import save_tiny_checkpoint

    study = repo_script("benchmarks/onnx_quality.py")
    grader = save_tiny_checkpoint(
        tmp_path / "grader", num_labels=2, id2label={0: "0", 1: "1"}, seed=3
    )  # the recipe's rows are labelled 0 / 1
    args = ["--data-dir", str(DATA_DIR), "--out", str(tmp_path / "q.json"), "--quick"]
    args += ["--reranker", tiny["bert-rerank"], "--grader", str(grader)]
    results = study.main([*args, "--highlighter", tiny["bert-token"]])
    reranker = results["reranker"]["systems"]
    assert set(reranker) == {"torch-fp32", "onnx-fp32", "onnx-int8", "onnx-int8-each-pair-alone"}
    assert reranker["onnx-fp32"]["max_abs_score_diff"] < PARITY
    assert reranker["onnx-fp32"]["kendall_tau_min"] == 1.0
    assert reranker["onnx-fp32"]["ndcg10_diff_ci95"] == [0.0, 0.0]
    assert 0 < reranker["onnx-int8"]["max_abs_score_diff"] < 1
    assert reranker["onnx-int8-each-pair-alone"]["max_abs_score_diff_vs_batched_int8"] > 0
    for sample in ("held_out", "dl19_judged"):
        assert results["grader"][sample]["systems"]["onnx-fp32"]["flipped"] == 0
    for threshold in ("0.5", "0.7"):
        assert results["highlighter"][threshold]["onnx-fp32"]["rows_with_other_spans"] == 0
    assert json.loads((tmp_path / "q.json").read_text())["reranker"]["queries"] == 3
