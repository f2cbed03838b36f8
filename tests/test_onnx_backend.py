"""The ONNX Runtime back-end: parity with torch on every head and architecture, one session for
every shape, the export cache (reuse, invalidation, locations), shipped graphs, int8, threads,
and the message that names the extra when onnxruntime is missing.

Torch references are computed here with the transformers model itself, in eval mode.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from crag_integrations.engine import onnx as onnx_backend
from crag_integrations.engine.onnx import OnnxModel, export_onnx, load_onnx_model
from crag_integrations.testing import save_tiny_checkpoint
from crag_integrations.types import HeadKind

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

ARCHITECTURES = ("bert", "modernbert", "deberta-v2")
HEADS = ("rerank", "binary", "osmosis", "token")
PAIRS = [
    ("what causes rain?", "Rain forms when water vapor in the atmosphere condenses into droplets."),
    ("what causes rain?", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."),
    ("capital of japan", "The capital of Japan is Tokyo, which is also its largest city. " * 5),
    ("what is a reranker?", ""),
    ("東京", "東京は日本の首都です。 Café naïve résumé — emoji 🚀"),
]
#: fp32 ONNX against torch, in logit units (the issue's parity bar).
PARITY = 1e-5
#: Copies of the session checkpoints leave out exports an engine may have cached next to them.
_NO_EXPORTS = shutil.ignore_patterns(".crag_onnx")


def _task(head: str) -> HeadKind:
    return "token" if head == "token" else "sequence"


def _input_names(arch: str) -> tuple[str, ...]:
    # What the engine derives from the forward signature and the tokenizer's input names.
    if arch == "bert":
        return ("input_ids", "attention_mask", "token_type_ids")
    return ("input_ids", "attention_mask")


class CountingLoader:
    """Loads the float32 torch model for an export and counts how often an export needed it."""

    def __init__(self, path: Path, task: str) -> None:
        self.path = path
        self.task = task
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return _torch_model(self.path, self.task)


def _never_called() -> Any:
    raise AssertionError("this load must not export")


def _torch_model(path: Path, task: str) -> Any:
    auto: Any = (
        AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification
    )
    return auto.from_pretrained(path).eval()


def _encode(path: Path, pairs: list[tuple[str, str]] = PAIRS) -> dict[str, np.ndarray]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = tokenizer(
        [q for q, _ in pairs], [t for _, t in pairs], padding=True, return_tensors="np"
    )
    return {name: np.asarray(array, dtype=np.int64) for name, array in encoded.items()}


def _torch_logits(model: Any, arrays: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        logits = model(**{name: torch.from_numpy(a) for name, a in arrays.items()}).logits
    return np.asarray(logits.float().numpy())


def _run(model: OnnxModel, arrays: dict[str, np.ndarray]) -> np.ndarray:
    return model.run(arrays["input_ids"], arrays["attention_mask"], arrays.get("token_type_ids"))


def _random_batch(
    rng: np.random.Generator, batch: int, length: int, vocab: int, with_types: bool
) -> dict[str, np.ndarray]:
    """Right-padded random rows; the first row is full length so the width is exactly ``length``."""
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[0] = length
    ids = np.zeros((batch, length), dtype=np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(5, vocab, size=n)
        mask[row, :n] = 1
    arrays = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        arrays["token_type_ids"] = (np.arange(length) >= length // 2).astype(np.int64)[
            None, :
        ] * mask
    return arrays


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith(".staging-"))


# --------------------------------------------------------------------------------------
# Export and parity


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fp32_export_matches_torch_for_every_head_and_architecture(
    checkpoints: dict[str, Path], tmp_path: Path, arch: str, head: str
) -> None:
    """A fresh export returns the torch model's logits within 1e-5, with the head's shape."""
    path = checkpoints[f"{arch}-{head}"]
    loader = CountingLoader(path, _task(head))
    model = load_onnx_model(
        path,
        task=_task(head),
        input_names=_input_names(arch),
        cache_dir=tmp_path,
        load_model=loader,
    )
    arrays = _encode(path)
    expected = _torch_logits(_torch_model(path, _task(head)), arrays)
    got = _run(model, arrays)
    assert (model.source, loader.calls) == ("exported", 1)
    assert model.input_names == _input_names(arch)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=PARITY)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_session_serves_batches_1_to_64_and_lengths_8_to_the_limit(
    checkpoints: dict[str, Path], tmp_path: Path, arch: str
) -> None:
    """Dynamic batch and sequence axes: one export, one session, parity at every shape."""
    path = checkpoints[f"{arch}-rerank"]
    loader = CountingLoader(path, "sequence")
    model = load_onnx_model(
        path, task="sequence", input_names=_input_names(arch), cache_dir=tmp_path, load_model=loader
    )
    reference = _torch_model(path, "sequence")
    limit = reference.config.max_position_embeddings
    vocab = reference.config.vocab_size
    rng = np.random.default_rng(0)
    # The extremes one at a time (64 x 512 adds seconds of torch reference, not coverage).
    shapes = [(1, 8), (64, 8), (3, 37), (64, 130), (1, limit), (6, limit)]
    for batch, length in shapes:
        arrays = _random_batch(rng, batch, length, vocab, with_types=arch == "bert")
        got = _run(model, arrays)
        assert got.shape == (batch, 1)
        np.testing.assert_allclose(
            got, _torch_logits(reference, arrays), rtol=0, atol=PARITY, err_msg=f"{batch}x{length}"
        )
    assert loader.calls == 1
    assert len(_entries(tmp_path)) == 1


def test_token_head_serves_every_length(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """A token head's sequence axis is dynamic in its output too."""
    path = checkpoints["modernbert-token"]
    model = load_onnx_model(
        path, task="token", input_names=_input_names("modernbert"), cache_dir=tmp_path
    )
    reference = _torch_model(path, "token")
    rng = np.random.default_rng(1)
    for batch, length in [(1, 8), (5, 300), (2, 512)]:
        arrays = _random_batch(rng, batch, length, reference.config.vocab_size, with_types=False)
        got = _run(model, arrays)
        assert got.shape == (batch, length, 2)
        np.testing.assert_allclose(got, _torch_logits(reference, arrays), rtol=0, atol=PARITY)


def test_export_leaves_the_model_in_its_mode(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """The exporter restores the mode it found; the graph is the eval-mode (no dropout) one."""
    path = checkpoints["bert-rerank"]
    model = _torch_model(path, "sequence")
    model.train()
    graph = export_onnx(model, tmp_path / "m.onnx", input_names=_input_names("bert"))
    assert model.training
    model.eval()
    export_onnx(model, tmp_path / "n.onnx", input_names=_input_names("bert"))
    assert not model.training
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    arrays = _encode(path)
    (got,) = session.run(["logits"], arrays)
    np.testing.assert_allclose(got, _torch_logits(model, arrays), rtol=0, atol=PARITY)


def test_export_refuses_a_half_precision_model(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Graphs are exported from float32 CPU weights; anything else is refused with a remedy."""
    model = _torch_model(checkpoints["bert-rerank"], "sequence").half()
    with pytest.raises(ValueError, match="float32 model on the CPU"):
        export_onnx(model, tmp_path / "m.onnx", input_names=_input_names("bert"))
    with pytest.raises(ValueError, match="input_ids and attention_mask"):
        export_onnx(model.float(), tmp_path / "m.onnx", input_names=("input_ids",))


# --------------------------------------------------------------------------------------
# The export cache


def test_a_cached_export_is_reused_without_exporting(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """The second load of the same checkpoint and settings opens the cached graph."""
    path = checkpoints["deberta-v2-binary"]
    names = _input_names("deberta-v2")
    first = load_onnx_model(path, task="sequence", input_names=names, cache_dir=tmp_path)
    second = load_onnx_model(
        path, task="sequence", input_names=names, cache_dir=tmp_path, load_model=_never_called
    )
    assert (first.source, second.source) == ("exported", "cached")
    assert second.path == first.path
    arrays = _encode(path)
    np.testing.assert_array_equal(_run(second, arrays), _run(first, arrays))
    key = json.loads((first.path.parent / "export.json").read_text(encoding="utf-8"))
    assert key["checkpoint"] == onnx_backend.checkpoint_fingerprint(path)
    assert key["opset"] == onnx_backend.DEFAULT_OPSET


def test_changed_weights_are_exported_again_and_the_stale_export_dropped(tmp_path: Path) -> None:
    """A cached export whose checkpoint changed is never used; by default it lives next to it."""
    path = save_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    names = _input_names("bert")
    arrays = _encode(path)
    before = load_onnx_model(path, task="sequence", input_names=names)
    old = _run(before, arrays)
    assert before.source == "exported"
    assert before.path.parent.parent == path / ".crag_onnx"

    save_tiny_checkpoint(path, seed=1)  # same files, same sizes, new weights
    loader = CountingLoader(path, "sequence")
    after = load_onnx_model(path, task="sequence", input_names=names, load_model=loader)
    new = _run(after, arrays)
    assert (after.source, loader.calls) == ("exported", 1)
    assert after.path != before.path
    np.testing.assert_allclose(
        new, _torch_logits(_torch_model(path, "sequence"), arrays), atol=PARITY
    )
    assert np.abs(new - old).max() > 1e-2
    assert _entries(path / ".crag_onnx") == [after.path.parent]


def test_a_damaged_cache_entry_is_exported_again(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """An entry whose key file does not match its key is discarded, not trusted."""
    path = checkpoints["bert-binary"]
    names = _input_names("bert")
    first = load_onnx_model(path, task="sequence", input_names=names, cache_dir=tmp_path)
    (first.path.parent / "export.json").write_text("{}", encoding="utf-8")
    loader = CountingLoader(path, "sequence")
    again = load_onnx_model(
        path, task="sequence", input_names=names, cache_dir=tmp_path, load_model=loader
    )
    assert (again.source, loader.calls) == ("exported", 1)


def test_settings_are_part_of_the_key(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """Another opset is another export, next to the first, not a replacement of it."""
    path = checkpoints["bert-rerank"]
    names = _input_names("bert")
    a = load_onnx_model(path, task="sequence", input_names=names, cache_dir=tmp_path)
    b = load_onnx_model(path, task="sequence", input_names=names, cache_dir=tmp_path, opset=18)
    assert (a.source, b.source) == ("exported", "exported")
    assert a.path != b.path and len(_entries(tmp_path)) == 2


def test_hub_cache_checkpoints_export_to_the_user_cache(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshot folders of the hub cache are left alone; exports go under XDG_CACHE_HOME."""
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "0123abc"
    shutil.copytree(checkpoints["bert-rerank"], snapshot, ignore=_NO_EXPORTS)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = load_onnx_model(snapshot, task="sequence", input_names=_input_names("bert"))
    assert model.path.is_relative_to(tmp_path / "xdg" / "crag_integrations" / "onnx")
    assert not (snapshot / ".crag_onnx").exists()


# --------------------------------------------------------------------------------------
# Graphs shipped with a checkpoint


def _with_shipped_graph(source: Path, directory: Path, arch: str) -> Path:
    path = Path(shutil.copytree(source, directory, ignore=_NO_EXPORTS))
    (path / "onnx").mkdir()
    export_onnx(
        _torch_model(path, "sequence"), path / "onnx" / "model.onnx", input_names=_input_names(arch)
    )
    return path


def test_a_shipped_onnx_model_is_used_without_export(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """sentence-transformers' onnx/model.onnx is opened as it is; nothing is exported or cached."""
    path = _with_shipped_graph(checkpoints["modernbert-rerank"], tmp_path / "ckpt", "modernbert")
    model = load_onnx_model(
        path, task="sequence", input_names=_input_names("modernbert"), load_model=_never_called
    )
    assert (model.source, model.path) == ("shipped", path / "onnx" / "model.onnx")
    assert not (path / ".crag_onnx").exists()
    arrays = _encode(path)
    expected = _torch_logits(_torch_model(path, "sequence"), arrays)
    np.testing.assert_allclose(_run(model, arrays), expected, rtol=0, atol=PARITY)


def test_int8_uses_a_shipped_int8_file_or_quantises_the_shipped_fp32_one(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """int8 takes a shipped ``*qint8*`` file; else it quantises onnx/model.onnx: no export."""
    path = _with_shipped_graph(checkpoints["bert-rerank"], tmp_path / "ckpt", "bert")
    names = _input_names("bert")
    quantised = load_onnx_model(
        path,
        task="sequence",
        input_names=names,
        quantize="int8",
        cache_dir=tmp_path / "cache",
        load_model=_never_called,
    )
    assert quantised.source == "quantized"
    assert quantised.path.is_relative_to(tmp_path / "cache")

    shipped = path / "onnx" / "model_qint8_avx512_vnni.onnx"
    onnx_backend.quantize_int8(path / "onnx" / "model.onnx", shipped)
    model = load_onnx_model(
        path, task="sequence", input_names=names, quantize="int8", load_model=_never_called
    )
    assert (model.source, model.path) == ("shipped", shipped)


def test_a_shipped_graph_without_logits_is_ignored(
    checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An embedding model's onnx/model.onnx (no ``logits`` output) cannot score: export instead."""
    path = Path(shutil.copytree(checkpoints["bert-rerank"], tmp_path / "ckpt", ignore=_NO_EXPORTS))
    (path / "onnx").mkdir()
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["last_hidden_state"], to=onnx.TensorProto.FLOAT)],
        "embedding",
        [
            helper.make_tensor_value_info(name, onnx.TensorProto.INT64, ["b", "s"])
            for name in ("input_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info("last_hidden_state", onnx.TensorProto.FLOAT, ["b", "s"])],
    )
    onnx.save(helper.make_model(graph), str(path / "onnx" / "model.onnx"))
    loader = CountingLoader(path, "sequence")
    with caplog.at_level("WARNING", logger="crag_integrations.engine.onnx"):
        model = load_onnx_model(
            path, task="sequence", input_names=_input_names("bert"), load_model=loader
        )
    assert (model.source, loader.calls) == ("exported", 1)
    assert "ignoring" in caplog.text and "last_hidden_state" in caplog.text


def test_find_shipped_onnx_prefers_the_fp32_file_for_fp32(tmp_path: Path) -> None:
    """fp32 never picks a quantised file; int8 never picks the fp32 one."""
    (tmp_path / "onnx").mkdir()
    for name in ("model.onnx", "model_O4.onnx", "model_quint8_avx2.onnx", "model_qint8_arm64.onnx"):
        (tmp_path / "onnx" / name).write_bytes(b"")
    assert onnx_backend.find_shipped_onnx(tmp_path) == tmp_path / "onnx" / "model.onnx"
    int8 = onnx_backend.find_shipped_onnx(tmp_path, quantize="int8")
    assert int8 is not None and "int8" in int8.name
    assert onnx_backend.find_shipped_onnx(tmp_path / "onnx" / "none") is None


# --------------------------------------------------------------------------------------
# int8


@pytest.mark.parametrize("name", ["bert-rerank", "deberta-v2-token"])
def test_int8_runs_and_is_close_but_not_exact(
    checkpoints: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """Dynamic int8 trades exact logits for speed: correlated with fp32, never identical."""
    path = checkpoints[name]
    arch, head = name.rsplit("-", 1)
    task = _task(head)
    fp32 = load_onnx_model(path, task=task, input_names=_input_names(arch), cache_dir=tmp_path)
    int8 = load_onnx_model(
        path, task=task, input_names=_input_names(arch), quantize="int8", cache_dir=tmp_path
    )
    assert (int8.source, int8.quantize) == ("quantized", "int8")  # from the cached fp32 graph
    ops = {node.op_type for node in onnx.load(str(int8.path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    reference = _torch_model(path, task)
    arrays = _random_batch(
        np.random.default_rng(2), 64, 48, reference.config.vocab_size, with_types=arch == "bert"
    )
    exact, approximate = _run(fp32, arrays), _run(int8, arrays)
    assert approximate.dtype == np.float32 and approximate.shape == exact.shape
    error = np.abs(approximate - exact).max()
    assert 1e-5 < error < 0.25 * np.abs(exact).max()
    assert np.corrcoef(exact.ravel(), approximate.ravel())[0, 1] > 0.95
    again = load_onnx_model(
        path, task=task, input_names=_input_names(arch), quantize="int8", cache_dir=tmp_path
    )
    assert (again.source, again.path) == ("cached", int8.path)


def test_int8_is_cpu_only_and_quantize_is_checked(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Bad combinations fail before any export, with what to do instead."""
    path = checkpoints["bert-rerank"]
    names = _input_names("bert")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        with pytest.raises(ValueError, match="CPU only"):
            load_onnx_model(
                path, task="sequence", input_names=names, quantize="int8", device="cuda"
            )
    with pytest.raises(ValueError, match="quantize must be"):
        load_onnx_model(
            path,
            task="sequence",
            input_names=names,
            quantize="int4",  # type: ignore[arg-type]
            cache_dir=tmp_path,
        )
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------
# Sessions and the run contract


def test_session_is_sized_like_torch_and_uses_the_cpu_provider(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """CPU execution provider by default; CUDA asked for without onnxruntime-gpu says so."""
    path = checkpoints["bert-rerank"]
    names = _input_names("bert")
    model = load_onnx_model(path, task="sequence", input_names=names, cache_dir=tmp_path)
    assert model.providers == ("CPUExecutionProvider",)
    options = model._session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(ValueError, match="'cpu' or 'cuda"):
        load_onnx_model(path, task="sequence", input_names=names, device="mps")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            load_onnx_model(path, task="sequence", input_names=names, device="cuda")


def test_run_contract_token_types_default_to_zeros_and_shapes_are_checked(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """``token_type_ids=None`` means zeros; a graph without them ignores them; shapes must agree."""
    bert = load_onnx_model(
        checkpoints["bert-rerank"],
        task="sequence",
        input_names=_input_names("bert"),
        cache_dir=tmp_path,
    )
    modernbert = load_onnx_model(
        checkpoints["modernbert-rerank"],
        task="sequence",
        input_names=_input_names("modernbert"),
        cache_dir=tmp_path,
    )
    ids = np.array([[2, 40, 41, 3, 0], [2, 50, 3, 0, 0]], dtype=np.int32)
    mask = (ids > 0).astype(np.int64)
    zeros = np.zeros_like(ids)
    np.testing.assert_array_equal(bert.run(ids, mask, None), bert.run(ids, mask, zeros))
    np.testing.assert_array_equal(modernbert.run(ids, mask, zeros), modernbert.run(ids, mask))
    with pytest.raises(ValueError, match="one shape"):
        bert.run(ids, mask[:, :3])


def test_concurrent_runs_on_one_session_agree_with_sequential_ones(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """Several threads may call run at once (ONNX Runtime sessions allow concurrent runs)."""
    path = checkpoints["bert-binary"]
    model = load_onnx_model(
        path, task="sequence", input_names=_input_names("bert"), cache_dir=tmp_path
    )
    rng = np.random.default_rng(3)
    batches = [_random_batch(rng, 8, 24 + 8 * i, 200, with_types=True) for i in range(8)]
    expected = [_run(model, arrays) for arrays in batches]
    got: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        for _ in range(3):
            got[index] = _run(model, batches[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, logits in enumerate(expected):
        np.testing.assert_array_equal(got[index], logits)


# --------------------------------------------------------------------------------------
# Optional dependencies


def test_a_missing_onnxruntime_names_the_extra(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without onnxruntime (or onnx) the error says which extra to install."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r'pip install "crag-integrations\[onnx\]"'):
        load_onnx_model(
            checkpoints["bert-rerank"],
            task="sequence",
            input_names=_input_names("bert"),
            cache_dir=tmp_path,
        )
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"onnx package.*crag-integrations\[onnx\]"):
        onnx_backend.quantize_int8(tmp_path / "a.onnx", tmp_path / "b.onnx")


def test_importing_the_backend_imports_neither_onnxruntime_nor_onnx() -> None:
    """The torch path pays nothing for this module: its optional imports are lazy."""
    code = (
        "import sys, crag_integrations.engine.onnx; "
        "print(sorted({'onnxruntime', 'onnx'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
