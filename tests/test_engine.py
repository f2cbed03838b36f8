"""The shared engine: loading, caching, parity with sentence-transformers, batching, windows."""

from __future__ import annotations

import itertools
import logging
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

from crag_integrations import (
    EngineConfig,
    IncompatibleModelError,
    ModelUnavailableError,
    get_engine,
    release_engines,
)
from crag_integrations.engine.loading import windows_cover_text
from crag_integrations.engine.windows import EncodedWindow, clamp_stride, encode_windows
from crag_integrations.testing import save_tiny_checkpoint

PAIRS = [
    ("what causes rain?", "Rain forms when water vapor in the atmosphere condenses into droplets."),
    ("what causes rain?", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    ("capital of japan", "The capital of Japan is Tokyo, which is also its largest city."),
    ("capital of japan", "Photosynthesis converts light energy into chemical energy " * 6),
    ("what is a reranker?", "A reranker sorts retrieved chunks so the most relevant come first."),
    ("what is a reranker?", ""),
    ("what is modernbert?", "ModernBERT is a long-context encoder for NLP. " * 3),
]

ARCHITECTURES = ("bert", "modernbert", "deberta-v2")


def _logits(engine_results: list) -> np.ndarray:  # type: ignore[type-arg]
    return np.array([r.window_logits[0] for r in engine_results], dtype=np.float64)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("head", ["rerank", "binary", "osmosis"])
def test_logits_match_sentence_transformers_cross_encoder(
    checkpoints: dict[str, Path], arch: str, head: str
) -> None:
    """Raw logits equal CrossEncoder.predict (no activation) within 1e-4 in fp32."""
    path = str(checkpoints[f"{arch}-{head}"])
    reference = CrossEncoder(path, device="cpu", max_length=128).predict(
        PAIRS, activation_fn=torch.nn.Identity(), batch_size=3
    )
    ours = get_engine(path, device="cpu", max_length=128).score_pairs(PAIRS)
    assert all(r.num_windows == 1 for r in ours)
    np.testing.assert_allclose(
        _logits(ours), np.asarray(reference, dtype=np.float64).reshape(len(PAIRS), -1), atol=1e-4
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_scores_do_not_depend_on_batch_composition_or_order(
    checkpoints: dict[str, Path], arch: str
) -> None:
    """Token budgets that force different batches, and shuffled inputs, give the same scores.

    The score cache is off so every variant really runs the model.
    """
    path = str(checkpoints[f"{arch}-rerank"])
    wide = get_engine(path, max_length=128, token_budget=100_000, cache_size=0).score_pairs(PAIRS)
    narrow = get_engine(path, max_length=128, token_budget=40, cache_size=0).score_pairs(PAIRS)
    np.testing.assert_allclose(_logits(wide), _logits(narrow), atol=1e-5)

    order = list(range(len(PAIRS)))
    random.Random(7).shuffle(order)
    shuffled = get_engine(path, max_length=128, cache_size=0).score_pairs([PAIRS[i] for i in order])
    np.testing.assert_allclose(_logits(shuffled), _logits(wide)[order], atol=1e-5)


def test_token_budget_bounds_the_padded_batch(checkpoints: dict[str, Path]) -> None:
    """A small budget splits the work into more forward passes, never a larger one."""
    path = str(checkpoints["bert-rerank"])
    engine = get_engine(path, max_length=128, token_budget=64, cache_size=0)
    before = engine.forward_passes
    engine.score_pairs(PAIRS)
    small_budget_passes = engine.forward_passes - before
    big = get_engine(path, max_length=128, token_budget=100_000, cache_size=0)
    before = big.forward_passes
    big.score_pairs(PAIRS)
    assert big.forward_passes - before == 1
    assert small_budget_passes > 1


def test_equal_configs_share_one_engine_and_one_loaded_model(checkpoints: dict[str, Path]) -> None:
    """Equal configurations return the same object; windowing-only differences share weights."""
    path = checkpoints["bert-binary"]
    first = get_engine(str(path))
    assert first is get_engine(EngineConfig(model=str(path)))
    assert first is get_engine(EngineConfig(model=str(path / ".")))
    other_windows = get_engine(str(path), max_length=64, stride=8)
    assert other_windows is not first
    first.load()
    other_windows.load()
    assert first._runner is other_windows._runner
    assert first.load_count == 1


def test_constructing_an_engine_loads_nothing(tmp_path: Path) -> None:
    """get_engine is cheap: the weights load on first use."""
    path = save_tiny_checkpoint(tmp_path / "lazy", seed=99)
    engine = get_engine(str(path))
    assert not engine.is_loaded
    engine.score_pairs([("q", "t")])
    assert engine.is_loaded and engine.load_count == 1


def test_concurrent_first_use_loads_the_model_once(tmp_path: Path) -> None:
    """Sixteen threads hitting a cold engine at once load it exactly once and all succeed."""
    path = save_tiny_checkpoint(tmp_path / "cold", seed=5)
    engine = get_engine(str(path))
    barrier = threading.Barrier(16)
    results: list[object] = [None] * 16
    errors: list[BaseException] = []

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = engine.score_pairs([(f"query {i}", PAIRS[i % len(PAIRS)][1])])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert engine.load_count == 1
    assert all(r is not None for r in results)


def test_concurrent_callers_get_their_own_results(checkpoints: dict[str, Path]) -> None:
    """Many threads with different queries each get exactly the single-caller result."""
    path = str(checkpoints["modernbert-osmosis"])
    # No score cache: every caller's pairs must really go through shared forward passes.
    engine = get_engine(path, max_length=128, cache_size=0)
    reference = {i: engine.score_pairs([PAIRS[i]])[0] for i in range(len(PAIRS))}
    failures: list[str] = []

    def call(i: int) -> None:
        for _ in range(5):
            got = engine.score_pairs([PAIRS[i % len(PAIRS)]])[0]
            want = reference[i % len(PAIRS)]
            if not np.allclose(got.window_logits, want.window_logits, atol=1e-5):
                failures.append(f"caller {i}: {got} != {want}")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_long_texts_are_windowed_not_truncated(checkpoints: dict[str, Path]) -> None:
    """A text longer than max_length is split into overlapping windows, each scored."""
    path = str(checkpoints["bert-rerank"])
    long_text = " ".join(["The mitochondria is the powerhouse of the cell."] * 60)
    engine = get_engine(path, max_length=64, stride=16)
    [result] = engine.score_pairs([("what is the powerhouse of the cell?", long_text)])
    assert result.num_windows > 5
    # The first window is exactly what a truncating scorer would have seen.
    truncated = CrossEncoder(path, device="cpu", max_length=64).predict(
        [("what is the powerhouse of the cell?", long_text)], activation_fn=torch.nn.Identity()
    )
    assert result.window_logits[0][0] == pytest.approx(float(np.ravel(truncated)[0]), abs=1e-4)


def test_more_stride_means_more_windows(checkpoints: dict[str, Path]) -> None:
    """Stride is the overlap between windows: a larger overlap needs more windows."""
    path = str(checkpoints["bert-rerank"])
    text = " ".join(["Cross-encoders read the query and the document together."] * 30)
    engine = get_engine(path, max_length=64)
    low = engine.score_pairs([("q", text)], stride=0)[0].num_windows
    high = engine.score_pairs([("q", text)], stride=24)[0].num_windows
    assert high > low > 1


def test_token_scores_map_to_character_offsets_across_windows(
    checkpoints: dict[str, Path],
) -> None:
    """Token offsets cover the text in order, identically whether windowed or not."""
    path = str(checkpoints["bert-token"])
    text = "The Eiffel Tower is in Paris. 東京は日本の首都です。 Café naïve 🚀 résumé. " * 8
    engine = get_engine(path)
    windowed = engine.token_scores([("where is the tower?", text)], max_length=48, stride=12)[0]
    whole = engine.token_scores([("where is the tower?", text)], max_length=512)[0]
    assert windowed.num_windows > 1 and whole.num_windows == 1
    assert windowed.offsets == whole.offsets
    starts = [start for start, _ in whole.offsets]
    assert starts == sorted(starts)
    for (start, end), probs in zip(whole.offsets, whole.probabilities, strict=True):
        assert 0 <= start <= end <= len(text)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_a_query_too_long_for_max_length_raises_a_clear_error(checkpoints: dict[str, Path]) -> None:
    """If the query alone fills the window there is no room for text: say so."""
    engine = get_engine(str(checkpoints["bert-rerank"]), max_length=16)
    with pytest.raises(ValueError, match="Shorten the query or raise max_length"):
        engine.score_pairs([("what causes rain " * 10, "Rain.")])


def test_wrong_head_for_the_task_raises(checkpoints: dict[str, Path]) -> None:
    """Asking a token head for sequence scores (or vice versa) names the problem."""
    with pytest.raises(IncompatibleModelError, match="token-classification head"):
        get_engine(str(checkpoints["bert-token"])).score_pairs([("q", "t")])
    with pytest.raises(IncompatibleModelError, match="sequence-classification head"):
        get_engine(str(checkpoints["bert-rerank"])).token_scores([("q", "t")])


def test_head_is_read_from_the_config(checkpoints: dict[str, Path]) -> None:
    """One label, five labels and token heads are told apart by config.json alone."""
    assert get_engine(str(checkpoints["deberta-v2-rerank"])).head.num_labels == 1
    osmosis = get_engine(str(checkpoints["deberta-v2-osmosis"])).head
    assert osmosis.kind == "sequence" and osmosis.id2label[0] == "ADDR_DIRECT"
    assert get_engine(str(checkpoints["deberta-v2-token"])).head.kind == "token"


def test_a_checkpoint_without_a_classification_head_is_rejected(tmp_path: Path) -> None:
    """A bare encoder (like a bi-encoder) is not silently given a random head."""
    from transformers import BertConfig, BertModel

    from crag_integrations.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(tmp_path / "bare")
    tokenizer.save_pretrained(tmp_path / "bare")
    with pytest.raises(IncompatibleModelError, match="ForSequenceClassification"):
        get_engine(str(tmp_path / "bare")).load()


def test_a_missing_hub_model_offline_names_the_model_and_the_fix(tmp_path: Path) -> None:
    """An id that is not in the cache raises ModelUnavailableError with instructions."""
    engine = get_engine(
        "cross-encoder/ms-marco-MiniLM-L6-v2", local_files_only=True, cache_dir=str(tmp_path)
    )
    with pytest.raises(ModelUnavailableError) as info:
        engine.load()
    message = str(info.value)
    assert "cross-encoder/ms-marco-MiniLM-L6-v2" in message
    assert "not available offline" in message
    assert "hf download" in message and "local directory" in message


def test_a_missing_local_directory_says_so(tmp_path: Path) -> None:
    """A path that does not exist is reported as a path, not as a hub id."""
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        get_engine(str(tmp_path / "nope"), local_files_only=True).load()


def test_release_engines_frees_and_later_calls_reload(tmp_path: Path) -> None:
    """After release_engines the next get_engine gives a fresh engine that loads again."""
    path = save_tiny_checkpoint(tmp_path / "release", seed=3)
    engine = get_engine(str(path))
    before = engine.score_pairs([("q", "t")])
    assert release_engines() >= 1
    with pytest.raises(RuntimeError, match="released"):
        engine.score_pairs([("q", "t")])
    fresh = get_engine(str(path))
    assert fresh is not engine
    assert fresh.score_pairs([("q", "t")]) == before


def test_empty_input_does_not_load_the_model(tmp_path: Path) -> None:
    """No pairs: an empty result and the weights stay on disk."""
    path = save_tiny_checkpoint(tmp_path / "empty", seed=4)
    engine = get_engine(str(path))
    assert engine.score_pairs([]) == []
    assert engine.token_scores([]) == []
    assert not engine.is_loaded


def test_cpu_defaults_to_float32(checkpoints: dict[str, Path]) -> None:
    """On CPU the auto dtype is float32 (bf16 measured about 5x slower on CPU)."""
    engine = get_engine(str(checkpoints["bert-rerank"]), device="cpu")
    assert engine.device == "cpu" and engine.dtype == "float32"


def test_invalid_configs_are_rejected() -> None:
    """Nonsense settings fail at construction with the accepted values in the message."""
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(model="m", dtype="float8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        EngineConfig(model="m", max_length=2)
    with pytest.raises(ValueError, match="stride"):
        EngineConfig(model="m", stride=-1)
    with pytest.raises(ValueError, match="hub id or a local directory"):
        EngineConfig(model="  ")


def test_window_coverage_check_is_exact() -> None:
    """The load-time guard accepts windows that hold every token and rejects any loss."""
    text = [(0, 4), (5, 9), (10, 14), (15, 19)]
    assert windows_cover_text(text, [[(0, 4), (5, 9), (10, 14)], [(10, 14), (15, 19)]])
    assert not windows_cover_text(text, [[(0, 4), (5, 9)], [(5, 9), (10, 14)]])
    assert windows_cover_text([], [])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_overflow_windows_of_the_installed_tokenizers_lose_no_text(
    checkpoints: dict[str, Path], arch: str
) -> None:
    """The installed transformers windows long pairs without dropping tokens (the guard
    every load runs; transformers 5.17.0 fails it)."""
    from transformers import AutoTokenizer

    from crag_integrations.engine.loading import check_overflow_windows

    tokenizer = AutoTokenizer.from_pretrained(checkpoints[f"{arch}-rerank"])
    check_overflow_windows(tokenizer, arch)


# --------------------------------------------------------------------------------------
# encode_windows: the one windowing function of inference and training

LONG_TEXT = " ".join(f"sentence {i} talks about rivers, stones and clouds." for i in range(40))


def _text_tokens(window: EncodedWindow) -> list[tuple[int, int]]:
    assert window.sequence_ids is not None and window.offsets is not None
    return [o for o, s in zip(window.offsets, window.sequence_ids, strict=True) if s == 1]


def test_clamp_stride_keeps_windows_advancing() -> None:
    """The stride is at most half the room the query leaves; no room at all is an error."""
    assert clamp_stride(8, max_length=64, query_tokens=10, special_tokens=3) == 8
    assert clamp_stride(128, max_length=64, query_tokens=10, special_tokens=3) == 25
    assert clamp_stride(128, max_length=64, query_tokens=60, special_tokens=3) == 0
    with pytest.raises(ValueError, match="leaves no room for the text within max_length=64"):
        clamp_stride(0, max_length=64, query_tokens=61, special_tokens=3)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_long_query_with_a_large_stride_gets_a_clamped_stride_and_full_coverage(
    checkpoints: dict[str, Path], arch: str
) -> None:
    """A stride beyond half the text room is clamped; windows advance and cover the text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoints[f"{arch}-rerank"])
    query = "what do the sentences say about rivers and stones and clouds " * 3
    query_tokens = len(tokenizer(query, add_special_tokens=False)["input_ids"])
    special = tokenizer.num_special_tokens_to_add(pair=True)
    max_length = query_tokens + special + 20
    [windows] = encode_windows(
        tokenizer,
        [(query, LONG_TEXT)],
        max_length=max_length,
        stride=1_000,
        with_offsets=True,
        with_token_type_ids=False,
    )
    assert not isinstance(windows, ValueError)
    assert len(windows) > 2
    assert all(len(w.input_ids) <= max_length and w.token_type_ids is None for w in windows)
    text = tokenizer(LONG_TEXT, add_special_tokens=False, return_offsets_mapping=True)
    text_offsets = [tuple(o) for o in text["offset_mapping"]]
    per_window = [_text_tokens(w) for w in windows]
    assert windows_cover_text(text_offsets, per_window)
    for before, after in itertools.pairwise(per_window):
        # Consecutive windows share exactly the clamped stride: half of the 20-token room.
        assert before[-10:] == after[:10]
        assert after[-1] > before[-1]


def test_a_query_with_no_room_fails_only_its_own_pair(checkpoints: dict[str, Path]) -> None:
    """The other pairs are windowed exactly as they would be alone."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoints["bert-rerank"])
    options: dict[str, Any] = {
        "max_length": 32,
        "stride": 8,
        "with_offsets": False,
        "with_token_type_ids": True,
    }
    pairs = [("short query", LONG_TEXT), ("a very long query " * 20, "Rain."), ("q", "Rain.")]
    first, failed, last = encode_windows(tokenizer, pairs, **options)
    assert isinstance(failed, ValueError)
    assert "Shorten the query or raise max_length" in str(failed)
    assert first == encode_windows(tokenizer, pairs[:1], **options)[0]
    assert last == encode_windows(tokenizer, pairs[2:], **options)[0]
    assert not isinstance(first, ValueError) and not isinstance(last, ValueError)
    assert len(first) > 1 and len(last) == 1
    assert all(w.token_type_ids is not None and w.offsets is None for w in first)
    assert encode_windows(tokenizer, [], **options) == []


def test_the_engine_reads_exactly_the_windows_of_encode_windows(
    checkpoints: dict[str, Path],
) -> None:
    """Inference windows through encode_windows: same windows, same text offsets."""
    from transformers import AutoTokenizer

    path = str(checkpoints["bert-token"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    query = "where do rivers go?"
    [windows] = encode_windows(
        tokenizer,
        [(query, LONG_TEXT)],
        max_length=48,
        stride=12,
        with_offsets=True,
        with_token_type_ids=True,
    )
    assert not isinstance(windows, ValueError)
    [scores] = get_engine(path).token_scores([(query, LONG_TEXT)], max_length=48, stride=12)
    assert scores.num_windows == len(windows)
    merged = sorted({o for w in windows for o in _text_tokens(w)})
    assert list(scores.offsets) == merged


# --------------------------------------------------------------------------------------
# max_length against the checkpoint's limit


def test_a_configured_max_length_above_the_models_limit_is_refused_at_load(
    checkpoints: dict[str, Path],
) -> None:
    """EngineConfig(max_length=1000) on a 512-position model: a ValueError naming the
    limit at load, before any text is scored (it used to crash inside torch on long texts)."""
    engine = get_engine(str(checkpoints["bert-rerank"]), max_length=1000)
    with pytest.raises(ValueError, match=r"max_length=1000 is more than the 512 tokens"):
        engine.load()
    with pytest.raises(ValueError, match="use max_length <= 512"):
        engine.score_pairs([("q", "a short text")])


def test_a_per_call_max_length_above_the_limit_is_refused_before_any_work(
    checkpoints: dict[str, Path],
) -> None:
    """A per-call max_length (as EvidenceHighlighter(max_length=...) passes) is checked too."""
    engine = get_engine(str(checkpoints["bert-token"]))
    passes = engine.forward_passes
    with pytest.raises(ValueError, match=r"max_length=100000 .* 512 tokens"):
        engine.token_scores([("q", "text " * 2000)], max_length=100_000)
    assert engine.forward_passes == passes
    [whole] = engine.token_scores([("q", "text " * 2000)], max_length=512)  # the limit works
    assert whole.num_windows > 1


@pytest.mark.parametrize(
    ("arch", "expected", "reason"),
    [
        ("bert", 64, "position embeddings hold 64"),  # an absolute table: the hard limit
        ("modernbert", 64, "max_position_embeddings is 64"),  # rotary: the trained length
        ("deberta-v2", 64, "max_position_embeddings is 64"),  # relative only
    ],
)
def test_the_models_limit_is_read_from_the_checkpoint(
    tmp_path: Path, arch: str, expected: int, reason: str
) -> None:
    """A tokenizer that declares no limit: the model's positions decide, per architecture;
    the limit itself runs, one more is refused with the reason."""
    path = save_tiny_checkpoint(
        tmp_path / arch, architecture=arch, max_position_embeddings=64, model_max_length=10**30
    )
    engine = get_engine(str(path))
    assert engine.model_max_length == engine.max_length == expected
    [result] = engine.score_pairs([("q", "word " * 400)])  # every window at the limit
    assert result.num_windows > 1
    with pytest.raises(ValueError, match=reason):
        engine.score_pairs([("q", "text")], max_length=expected + 1)


def test_the_tokenizers_declared_limit_counts_too(tmp_path: Path) -> None:
    """A tokenizer declaring fewer tokens than the positions: the smaller limit wins."""
    path = save_tiny_checkpoint(tmp_path / "declared", model_max_length=96)
    engine = get_engine(str(path))
    assert engine.model_max_length == 96
    with pytest.raises(ValueError, match="tokenizer's model_max_length is 96"):
        engine.score_pairs([("q", "t")], max_length=128)


def test_loading_prints_no_token_indices_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The load-time overflow probe is longer than small models' limit on purpose; it must
    not make transformers warn "Token indices sequence length is longer than ..."."""
    import transformers

    path = save_tiny_checkpoint(tmp_path / "short", max_position_embeddings=64)
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            engine = get_engine(str(path))
            engine.load()
    finally:
        transformers.utils.logging.disable_propagation()
        transformers.utils.logging.set_verbosity(verbosity)
    captured = capsys.readouterr()
    assert "Token indices sequence length" not in captured.err + captured.out
    assert not [r for r in caplog.records if "Token indices" in r.getMessage()]


# --------------------------------------------------------------------------------------
# The hot path and the event loop


def test_getting_an_engine_and_a_first_async_call_import_no_torch_on_the_loop(
    checkpoints: dict[str, Path],
) -> None:
    """In a fresh interpreter: get_engine and a role's engine look-up import neither torch nor
    transformers; the first async call loads in a worker thread while the loop keeps
    running, and returns the same scores as a sync call."""
    script = f"""
import asyncio, sys, time
from crag_integrations import Reranker, get_engine
path = {str(checkpoints["bert-rerank"])!r}
engine = get_engine(path)
role = Reranker(model=path)
assert role.engine is engine
assert "torch" not in sys.modules and "transformers" not in sys.modules, "imported on get"

async def main():
    gaps, last = [], time.perf_counter()
    async def tick():
        nonlocal last
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    ticker = asyncio.ensure_future(tick())
    result = await engine.ascore_pairs([("q", "a text")])
    ticker.cancel()
    return result, gaps

result, gaps = asyncio.run(main())
assert result == engine.score_pairs([("q", "a text")])
print(len(gaps))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 1  # the loop ran while the model loaded


def test_a_cached_role_call_takes_no_global_lock_and_touches_no_filesystem(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The steady state of a role call: with the registry lock held elsewhere and every
    directory check failing, a repeated call still completes (in a thread, with a timeout)."""
    from crag_integrations import Reranker
    from crag_integrations.engine import registry

    path = str(checkpoints["bert-rerank"])
    role = Reranker(model=path)
    expected = role.score("what causes rain?", [PAIRS[0][1], PAIRS[1][1]])

    def no_filesystem(self: Path) -> bool:
        raise AssertionError(f"filesystem checked on the hot path: {self}")

    monkeypatch.setattr(Path, "is_dir", no_filesystem)
    got: list[Any] = []
    with registry._REGISTRY_LOCK:  # held: a call that needs it would wait forever
        caller = threading.Thread(
            target=lambda: got.append(role.score("what causes rain?", [PAIRS[0][1], PAIRS[1][1]]))
        )
        caller.start()
        caller.join(timeout=30)
        assert not caller.is_alive(), "the cached call waited for the registry lock"
    assert got == [expected]


def test_the_engine_refuses_non_text_pairs_and_non_positive_windows(
    checkpoints: dict[str, Path],
) -> None:
    """Direct engine callers get a TypeError naming the pair instead of a score of the text
    "None", and max_length=0 or -3 is refused instead of meaning "the default"."""
    engine = get_engine(EngineConfig(model=str(checkpoints["bert-rerank"]), device="cpu"))
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        engine.score_pairs([("q", "text"), ("q", None)])  # type: ignore[list-item]
    for bad in (0, -3):
        with pytest.raises(ValueError, match="at least 8"):
            engine.score_pairs([("q", "text")], max_length=bad)
    assert len(engine.score_pairs([("q", "text")], max_length=16)) == 1


def test_a_checkpoint_made_after_its_first_mention_is_still_one_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Naming "ckpt" before it exists (train, then score, in one process) must not pin the
    relative name: once the directory exists, "ckpt" and its absolute path are one engine."""
    monkeypatch.chdir(tmp_path)
    assert EngineConfig(model="ckpt").model == "ckpt"
    (tmp_path / "ckpt").mkdir()
    assert EngineConfig(model="ckpt") == EngineConfig(model=str(tmp_path / "ckpt"))


def test_a_role_naming_a_checkpoint_before_it_exists_shares_its_engine_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """as_engine_config (what the roles call) must not pin a relative name either."""
    from crag_integrations.config import as_engine_config

    monkeypatch.chdir(tmp_path)
    assert as_engine_config("later").model == "later"
    (tmp_path / "later").mkdir()
    assert as_engine_config("later") == EngineConfig(model=str(tmp_path / "later"))
