"""The ONNX Runtime back-end: export a checkpoint once, cache it, serve it from one session.

A cross-encoder checkpoint becomes an ONNX graph in one of three ways, tried in this order:

1. **Shipped**: the checkpoint directory already holds ``onnx/model.onnx`` or ``model.onnx``
   (sentence-transformers' layout; for ``quantize="int8"`` a ``*qint8*`` / ``*quint8*``
   file). It is used as it is; nothing is exported.
2. **Cached**: an export made earlier for the same checkpoint *content* (a hash of its
   ``config.json`` and weight files) and the same export settings (opset, inputs,
   quantisation, torch / transformers / onnx / onnxruntime versions). A checkpoint whose
   weights changed hashes differently, so its old export is never used.
3. **Exported**: the transformers model is exported with torch's legacy (TorchScript)
   exporter, opset 17, with dynamic batch and sequence axes, so one graph serves every
   batch shape; the result is written atomically into the cache.

Where exports are cached: ``cache_dir`` when given; else next to a local checkpoint, in its
``.crag_onnx/`` folder, when that directory is writable; else (read-only checkpoints and
checkpoints inside the Hugging Face hub cache, whose snapshot folders belong to the hub
client) under :func:`default_cache_dir`. Each export is one folder named by its key,
holding ``model.onnx`` and ``export.json`` (the key in full, for people and for checking).

``quantize="int8"`` trades exact scores for speed: the fp32 graph is quantised dynamically
(weights int8 per output channel, activations quantised at run time, one scale per tensor,
so a pair's int8 score depends on what shares its forward pass). On trained MiniLM-L6
checkpoints (``benchmarks/onnx_quality.py``, ``docs/performance.md``) it reorders rankings
(per-query Kendall tau 0.86 median against fp32 on DL19, 76% of each top 10 kept), nDCG@10
and grader MCC stay within their noise bands, highlighter word F1 drops by up to 0.013; it
is off by default.

``onnxruntime`` (and ``onnx``, for quantising and for checking shipped graphs) are imported
only when this back-end is used: ``pip install "crag-integrations[onnx]"``.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from crag_integrations.testing import save_tiny_checkpoint
    >>> path = save_tiny_checkpoint(tempfile.mkdtemp(), num_labels=1)
    >>> model = load_onnx_model(
    ...     path, task="sequence", input_names=("input_ids", "attention_mask", "token_type_ids")
    ... )  # doctest: +SKIP
    >>> ids = np.array([[2, 40, 41, 3]], dtype=np.int64)
    >>> model.run(ids, np.ones_like(ids), None).shape  # doctest: +SKIP
    (1, 1)
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from crag_integrations.types import HeadKind

__all__ = [
    "DEFAULT_OPSET",
    "INT8_SETTINGS",
    "ExportSource",
    "OnnxModel",
    "Quantize",
    "checkpoint_fingerprint",
    "default_cache_dir",
    "export_onnx",
    "find_shipped_onnx",
    "int8_settings",
    "is_onnx_out_of_memory",
    "load_onnx_model",
    "prepare_onnx",
    "quantize_int8",
    "resolve_onnx_device",
]

logger = logging.getLogger(__name__)

Quantize = Literal["int8"]

#: How the graph a model runs was obtained this time: a file shipped in the checkpoint, a
#: cache hit, a fresh export (quantised after when int8 was asked), or an int8 graph quantised
#: now from a shipped or cached fp32 graph (no export).
ExportSource = Literal["shipped", "cached", "exported", "quantized"]

DEFAULT_OPSET = 17

#: ``quantize_dynamic`` settings for ``quantize="int8"`` (see :func:`int8_settings`).
#: Measured with ``benchmarks/onnx_probe.py --variants`` (MiniLM-L6, real encoder weights,
#: random one-logit head, 4 DL19 queries x 50 BM25 passages in 2,048-token batches, 2-core
#: AMD EPYC with AVX512-VNNI shared with other jobs, median of 5 rounds; speed-up over torch
#: fp32 / max logit error / median per-query Spearman against torch): per-channel QInt8
#: 3.28x / 6.8e-3 / 0.967; the same with reduce_range 3.01x / 7.9e-3 / 0.965; per-tensor
#: QInt8 3.42x / 1.4e-2 / 0.932; per-tensor QUInt8 2.31x / 8.8e-3 / 0.945. Per-channel
#: QInt8 keeps rankings closest at nearly the best speed.
INT8_SETTINGS: dict[str, Any] = {"per_channel": True, "weight_type": "QInt8"}

#: Bump when the export recipe changes in a way that changes the graph, so caches refresh.
_RECIPE_VERSION = 1

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_EXTRA_HINT = 'pip install "crag-integrations[onnx]"'

#: Files whose content decides the exported graph (tokenizer files do not).
_CONTENT_PATTERNS = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")

_NEXT_TO_CHECKPOINT = ".crag_onnx"
_GRAPH_FILE = "model.onnx"
_KEY_FILE = "export.json"


# --------------------------------------------------------------------------------------
# Optional dependencies


def _import_onnxruntime() -> Any:
    try:
        onnxruntime = importlib.import_module("onnxruntime")
    except ModuleNotFoundError as exc:
        # Only a missing onnxruntime means "install the extra"; a broken install must
        # surface as itself.
        if exc.name != "onnxruntime":
            raise
        raise ImportError(
            f"the ONNX back-end needs onnxruntime, which is not installed: {_EXTRA_HINT}"
        ) from exc
    return onnxruntime


def _import_onnx() -> Any:
    try:
        onnx = importlib.import_module("onnx")
    except ModuleNotFoundError as exc:
        if exc.name != "onnx":
            raise
        raise ImportError(
            f"the ONNX back-end needs the onnx package, which is not installed: {_EXTRA_HINT}"
        ) from exc
    return onnx


# --------------------------------------------------------------------------------------
# Checkpoint content and cache locations


def default_cache_dir() -> Path:
    """Where exports go when the checkpoint's own directory cannot hold them.

    ``$XDG_CACHE_HOME/crag_integrations/onnx``, by default ``~/.cache/crag_integrations/onnx``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crag_integrations" / "onnx"


def _file_digest(path: Path) -> str:
    resolved = path.resolve()
    # Files of a Hugging Face hub cache are symlinks to content-addressed blobs (sha256 for
    # LFS weights, git sha1 for small files): the blob's name already is a content hash.
    if resolved.parent.name == "blobs" and re.fullmatch(
        r"[0-9a-f]{40}|[0-9a-f]{64}", resolved.name
    ):
        return resolved.name
    digest = hashlib.sha256()
    with resolved.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_fingerprint(checkpoint: str | Path) -> str:
    """A hash of the files of ``checkpoint`` that decide its graph: config and weights.

    Args:
        checkpoint: A local checkpoint directory (``config.json`` plus weight files).

    Returns:
        A hex sha256 that changes whenever any of those files changes.

    Raises:
        FileNotFoundError: The directory has no ``config.json`` or no weight file.
    """
    directory = Path(checkpoint)
    files = sorted(
        {path for pattern in _CONTENT_PATTERNS for path in directory.glob(pattern)},
        key=lambda path: path.name,
    )
    files = [path for path in files if path.is_file()]
    names = {path.name for path in files}
    if "config.json" not in names or not any(n.endswith(_WEIGHT_SUFFIXES) for n in names):
        raise FileNotFoundError(
            f"{str(directory)!r} is not a checkpoint directory: it needs config.json and "
            "model.safetensors (or pytorch_model.bin) to be exported to ONNX"
        )
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{_file_digest(path)}\n".encode())
    return digest.hexdigest()


def _in_hub_cache(checkpoint: Path) -> bool:
    parts = checkpoint.resolve().parts
    return "snapshots" in parts and any(part.startswith("models--") for part in parts)


def _export_root(checkpoint: Path, cache_dir: str | Path | None) -> tuple[Path, bool]:
    """The folder that holds export entries, and whether it belongs to this checkpoint alone."""
    if cache_dir is not None:
        return Path(cache_dir), False
    if not _in_hub_cache(checkpoint) and os.access(checkpoint, os.W_OK):
        return checkpoint / _NEXT_TO_CHECKPOINT, True
    return default_cache_dir(), False


def _versions(*, quantized: bool) -> dict[str, str]:
    import torch
    import transformers

    versions = {"torch": str(torch.__version__), "transformers": str(transformers.__version__)}
    if quantized:
        versions["onnx"] = str(_import_onnx().__version__)
        versions["onnxruntime"] = str(_import_onnxruntime().__version__)
    return versions


def _entry_name(key: dict[str, Any]) -> str:
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:40]


def _lookup(root: Path, key: dict[str, Any]) -> Path | None:
    """The cached graph for ``key``, or ``None``; an entry that does not match is removed."""
    entry = root / _entry_name(key)
    graph = entry / _GRAPH_FILE
    try:
        stored = json.loads((entry / _KEY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = None
    if stored == key and graph.is_file():
        return graph
    if entry.exists():
        logger.info("discarding the ONNX cache entry %s: it does not match its key", entry)
        shutil.rmtree(entry, ignore_errors=True)
    return None


def _publish(
    root: Path, key: dict[str, Any], build: Callable[[Path], None], *, prune: bool
) -> Path:
    """Build an entry in a staging folder and rename it into place (atomic on one file system).

    ``build`` receives the path the graph must be written to. With ``prune`` (the root is a
    checkpoint's own ``.crag_onnx`` folder), entries made for other contents of the
    checkpoint are deleted: nothing can use them any more.
    """
    root.mkdir(parents=True, exist_ok=True)
    entry = root / _entry_name(key)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{entry.name}-", dir=root))
    try:
        build(staging / _GRAPH_FILE)
        # The key file goes last: an entry that has it is complete.
        (staging / _KEY_FILE).write_text(json.dumps(key, indent=2, sort_keys=True), "utf-8")
        try:
            staging.rename(entry)
        except OSError:
            # Another process published the same key meanwhile; its entry is as good.
            existing = _lookup(root, key)
            if existing is None:
                raise
            return existing
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if prune:
        _prune(root, keep=key["checkpoint"])
    return entry / _GRAPH_FILE


def _prune(root: Path, *, keep: str) -> None:
    for entry in root.iterdir():
        if entry.name.startswith(".staging-"):
            continue
        try:
            stored = json.loads((entry / _KEY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if stored.get("checkpoint") != keep:
            logger.info("removing the stale ONNX export %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Shipped graphs


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _int8_preference(name: str, flags: frozenset[str], machine: str) -> int:
    """Rank a shipped int8 file for this CPU (lower is better); every one runs anywhere."""
    if machine in ("arm64", "aarch64"):
        return 0 if "arm64" in name else 1
    if "avx512_vnni" in name:
        return 0 if "avx512_vnni" in flags else 3
    if "avx512" in name:
        return 1 if "avx512f" in flags else 3
    if "avx2" in name:
        return 2 if "avx2" in flags else 3
    return 3


def find_shipped_onnx(checkpoint: str | Path, *, quantize: Quantize | None = None) -> Path | None:
    """An ONNX graph shipped inside ``checkpoint``, in sentence-transformers' layout.

    Args:
        checkpoint: A local checkpoint directory.
        quantize: ``None`` for the fp32 ``onnx/model.onnx`` (or a top-level ``model.onnx``);
            ``"int8"`` for a ``*qint8*`` / ``*quint8*`` file, the one built for this CPU
            when several ship.

    Returns:
        The file, or ``None`` when the checkpoint ships none of that precision.
    """
    directory = Path(checkpoint)
    onnx_dir = directory / "onnx"
    if quantize is None:
        for candidate in (onnx_dir / "model.onnx", directory / "model.onnx"):
            if candidate.is_file():
                return candidate
        return None
    found = sorted(
        path
        for path in [*onnx_dir.glob("*.onnx"), *directory.glob("*.onnx")]
        if path.is_file() and ("qint8" in path.name or "quint8" in path.name)
    )
    if not found:
        return None
    flags = _cpu_flags()
    machine = platform.machine().lower()
    return min(found, key=lambda path: (_int8_preference(path.name, flags, machine), path.name))


def _usable(graph: Path) -> bool:
    """Whether a shipped graph has the interface this back-end drives."""
    onnx = _import_onnx()
    model = onnx.load(str(graph), load_external_data=False)
    inputs = {value.name for value in model.graph.input}
    initializers = {tensor.name for tensor in model.graph.initializer}
    outputs = {value.name for value in model.graph.output}
    required = inputs - initializers
    usable = "logits" in outputs and {"input_ids", "attention_mask"} <= required <= set(_INPUTS)
    if not usable:
        logger.warning(
            "ignoring %s: it takes %s and returns %s, not input_ids / attention_mask "
            "[/ token_type_ids] -> logits; exporting the checkpoint instead",
            graph,
            sorted(required),
            sorted(outputs),
        )
    return usable


# --------------------------------------------------------------------------------------
# Export and quantisation


def export_onnx(
    model: Any,
    destination: str | Path,
    *,
    input_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a transformers classification model to an ONNX graph that returns its logits.

    The graph takes int64 ``input_names`` of shape ``(batch, sequence)`` with both axes
    dynamic, so one export serves every batch shape, and returns ``logits``, float32,
    ``(batch, labels)`` for sequence heads or ``(batch, sequence, labels)`` for token heads.
    The model's train/eval mode is left as it was.

    Args:
        model: A loaded ``*ForSequenceClassification`` / ``*ForTokenClassification`` model,
            float32 on the CPU.
        destination: The ``.onnx`` file to write (its folder must exist).
        input_names: The inputs the model takes, a subset of ``input_ids``,
            ``attention_mask``, ``token_type_ids`` that holds the first two.
        opset: The ONNX opset to export to.

    Returns:
        ``destination``, as a ``Path``.

    Raises:
        ValueError: The model is not float32 on the CPU, or ``input_names`` is not usable.
    """
    import torch

    names = tuple(input_names)
    if not {"input_ids", "attention_mask"} <= set(names) <= set(_INPUTS):
        raise ValueError(
            f"input_names must hold input_ids and attention_mask and may add token_type_ids; "
            f"got {names!r}"
        )
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
        raise ValueError(
            f"ONNX export needs a float32 model on the CPU, got {parameter.dtype} on "
            f"{parameter.device}; load a float32 CPU copy for the export"
        )

    class _Logits(torch.nn.Module):
        """Positional inputs in ``names`` order to logits only (the graph's one output)."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, tensors, strict=True))).logits  # type: ignore[no-any-return]

    # Example inputs: two rows, the second padded, so the traced graph keeps the padding-mask
    # path (transformers may skip the mask for an all-ones mask) and no axis is length 1.
    length = 16
    vocab = int(getattr(model.config, "vocab_size", 0) or 2)
    input_ids = (torch.arange(2 * length, dtype=torch.int64).reshape(2, length) % vocab).clone()
    attention_mask = torch.ones((2, length), dtype=torch.int64)
    attention_mask[1, length // 2 :] = 0
    examples = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros((2, length), dtype=torch.int64),
    }
    wrapper = _Logits(model)
    was_training = model.training
    wrapper.eval()  # the exporter restores the wrapper's mode afterwards: make it eval
    model.eval()
    arguments = tuple(examples[name] for name in names)
    use_dynamo_flag = "dynamo" in inspect.signature(torch.onnx.export).parameters
    destination = Path(destination)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy exporter warns that it is legacy, and tracing warns about Python
            # branches on tensor sizes; parity tests on every architecture cover both.
            warnings.simplefilter("ignore")
            # Token heads return (batch, sequence, labels): their sequence axis is dynamic too.
            token_head = wrapper(*arguments).dim() == 3
            dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in names}
            dynamic_axes["logits"] = {0: "batch", 1: "sequence"} if token_head else {0: "batch"}
            options: dict[str, Any] = {
                "input_names": list(names),
                "output_names": ["logits"],
                "dynamic_axes": dynamic_axes,
                "opset_version": opset,
                "do_constant_folding": True,
            }
            if use_dynamo_flag:
                # The dynamo exporter is exact too, but ONNX Runtime fuses no attention in
                # its graph (0.99x torch in the probe of issue 14; TorchScript's: 1.16-1.40x).
                options["dynamo"] = False
            torch.onnx.export(wrapper, arguments, str(destination), **options)
    finally:
        model.train(was_training)
    return destination


def int8_settings() -> dict[str, Any]:
    """The ``quantize_dynamic`` settings ``quantize="int8"`` uses on this machine.

    :data:`INT8_SETTINGS` plus ``reduce_range``: 7-bit weights on x86 CPUs without VNNI,
    whose u8 x s8 multiply-add (VPMADDUBSW) saturates its int16 sums with 8-bit weights;
    full 8-bit weights elsewhere (more exact; on AVX512-VNNI also faster: 3.15x against
    2.46x torch fp32 in the probe).
    """
    machine = platform.machine().lower()
    flags = _cpu_flags()
    x86 = machine in ("x86_64", "amd64", "i386", "i686")
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return {**INT8_SETTINGS, "reduce_range": x86 and not vnni}


def quantize_int8(
    source: str | Path, destination: str | Path, *, settings: dict[str, Any] | None = None
) -> Path:
    """Quantise an fp32 graph dynamically to int8 (weights per channel, activations at run time).

    Args:
        source: The fp32 ``.onnx`` file.
        destination: The int8 ``.onnx`` file to write.
        settings: ``quantize_dynamic`` keywords (``weight_type`` by name); defaults to
            :func:`int8_settings`.

    Returns:
        ``destination``, as a ``Path``.
    """
    _import_onnx()
    _import_onnxruntime()
    quantization = importlib.import_module("onnxruntime.quantization")
    chosen = dict(int8_settings() if settings is None else settings)
    chosen["weight_type"] = getattr(quantization.QuantType, str(chosen["weight_type"]))
    destination = Path(destination)
    root = logging.getLogger()
    root.addFilter(_skip_preprocessing_advice)
    try:
        quantization.quantize_dynamic(str(source), str(destination), **chosen)
    finally:
        root.removeFilter(_skip_preprocessing_advice)
    return destination


def _skip_preprocessing_advice(record: logging.LogRecord) -> bool:
    """Drop onnxruntime's root-logger advice to pre-process the graph before quantising.

    ``quantize_dynamic`` logs it on every call; the recipe quantises the exported graph as it
    is, which is what the measurements in :data:`INT8_SETTINGS` were taken with.
    """
    return not str(record.msg).startswith("Please consider to run pre-processing")


def _default_loader(checkpoint: Path, task: HeadKind) -> Callable[[], Any]:
    def load() -> Any:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        auto_class: Any = (
            AutoModelForTokenClassification
            if task == "token"
            else AutoModelForSequenceClassification
        )
        return auto_class.from_pretrained(checkpoint, dtype=torch.float32).eval()

    return load


# --------------------------------------------------------------------------------------
# Choosing the graph


def prepare_onnx(
    checkpoint: str | Path,
    *,
    task: HeadKind,
    input_names: Sequence[str],
    quantize: Quantize | None = None,
    opset: int = DEFAULT_OPSET,
    cache_dir: str | Path | None = None,
    load_model: Callable[[], Any] | None = None,
) -> tuple[Path, ExportSource]:
    """Find or make the ONNX graph for a checkpoint: shipped, cached, or exported now.

    Args:
        checkpoint: A local checkpoint directory (for a hub model, its snapshot folder).
        task: ``"sequence"`` or ``"token"``: which head the checkpoint has.
        input_names: The inputs the torch model takes (used for an export).
        quantize: ``"int8"`` for the dynamically quantised graph; ``None`` for fp32.
        opset: The ONNX opset of an export.
        cache_dir: Where exports are cached; see the module docstring for the default.
        load_model: Returns the float32 CPU transformers model to export; called only when
            an export is needed. Defaults to loading ``checkpoint`` with transformers.

    Returns:
        The graph's path and how it was obtained.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    directory = Path(checkpoint)
    shipped = find_shipped_onnx(directory, quantize=quantize)
    if shipped is not None and _usable(shipped):
        return shipped, "shipped"

    root, own = _export_root(directory, cache_dir)
    fingerprint = checkpoint_fingerprint(directory)
    loader = load_model or _default_loader(directory, task)
    names = [name for name in _INPUTS if name in set(input_names)]
    fp32_key: dict[str, Any] = {
        "recipe": _RECIPE_VERSION,
        "checkpoint": fingerprint,
        "task": task,
        "input_names": names,
        "opset": opset,
        "quantize": None,
        **_versions(quantized=False),
    }

    def export(target: Path) -> None:
        export_onnx(loader(), target, input_names=names, opset=opset)

    if quantize is None:
        cached = _lookup(root, fp32_key)
        if cached is not None:
            return cached, "cached"
        return _publish(root, fp32_key, export, prune=own), "exported"

    shipped_fp32 = find_shipped_onnx(directory)
    if shipped_fp32 is not None and not _usable(shipped_fp32):
        shipped_fp32 = None
    settings = int8_settings()
    int8_key: dict[str, Any] = {
        "recipe": _RECIPE_VERSION,
        "checkpoint": fingerprint,
        "task": task,
        "quantize": "int8",
        "int8": settings,
        **_versions(quantized=True),
    }
    if shipped_fp32 is not None:
        int8_key["source"] = f"shipped:{shipped_fp32.name}:{_file_digest(shipped_fp32)}"
    else:
        int8_key["source"] = {k: v for k, v in fp32_key.items() if k != "checkpoint"}
    cached = _lookup(root, int8_key)
    if cached is not None:
        return cached, "cached"
    source: ExportSource = "quantized"
    base = shipped_fp32
    if base is None:
        base = _lookup(root, fp32_key)
    if base is None:
        base = _publish(root, fp32_key, export, prune=own)
        source = "exported"
    fp32_graph = base

    def quantize_into(target: Path) -> None:
        quantize_int8(fp32_graph, target, settings=settings)

    graph = _publish(root, int8_key, quantize_into, prune=own)
    return graph, source


# --------------------------------------------------------------------------------------
# Sessions


def resolve_onnx_device(device: str, *, quantize: Quantize | str | None = None) -> str:
    """The device an ONNX engine runs on: ``device`` itself, or for ``"auto"`` the GPU when
    torch sees one and this onnxruntime has the CUDA provider, else the CPU (always the CPU
    for int8, whose kernels are CPU kernels).

    Raises:
        ImportError: onnxruntime is not installed (the message names the extra).
    """
    if device != "auto":
        return device
    if quantize == "int8":
        return "cpu"
    import torch

    providers = _import_onnxruntime().get_available_providers()
    if "CUDAExecutionProvider" in providers and torch.cuda.is_available():
        return "cuda"
    return "cpu"


#: How ONNX Runtime words an allocation failure (it has no out-of-memory exception type):
#: its arena's "Failed to allocate memory" and CUDA's "out of memory".
_OUT_OF_MEMORY = re.compile(r"failed to allocate memory|out of memory", re.IGNORECASE)


def is_onnx_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is ONNX Runtime failing to allocate a batch's memory.

    Only exceptions raised by onnxruntime itself count, so a ``ValueError`` of ours that
    happens to say "out of memory" is not mistaken for one.
    """
    module = type(exc).__module__ or ""
    return module.startswith("onnxruntime") and bool(_OUT_OF_MEMORY.search(str(exc)))


def _providers(device: str, available: Sequence[str]) -> list[Any]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise ValueError(f"the ONNX back-end runs on 'cpu' or 'cuda[:N]', not {device!r}")
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"device={device!r} needs ONNX Runtime's CUDAExecutionProvider, but this "
            f"onnxruntime offers only {list(available)}; install onnxruntime-gpu instead of "
            "onnxruntime, or use device='cpu'"
        )
    options = {"device_id": int(match.group(1) or 0)}
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


class OnnxModel:
    """An ONNX Runtime session over a cross-encoder graph: padded int64 arrays in, logits out.

    Get one with :func:`load_onnx_model`; the constructor only wraps a session that exists.
    :meth:`run` is safe to call from several threads at once (ONNX Runtime sessions allow
    concurrent ``run`` calls), though one owner thread feeding batches is the intended use.

    Attributes:
        path: The ``.onnx`` file the session runs.
        source: How the graph was obtained (see :data:`ExportSource`).
        quantize: ``"int8"`` or ``None``.
        device: ``"cpu"`` or ``"cuda[:N]"``.

    Example:
        >>> import numpy as np
        >>> model = load_onnx_model(
        ...     "path/to/checkpoint", task="sequence", input_names=("input_ids", "attention_mask")
        ... )  # doctest: +SKIP
        >>> ids = np.array([[2, 40, 41, 3, 0]], dtype=np.int64)
        >>> mask = np.array([[1, 1, 1, 1, 0]], dtype=np.int64)
        >>> model.run(ids, mask, None).dtype  # doctest: +SKIP
        dtype('float32')
    """

    def __init__(
        self,
        session: Any,
        *,
        path: Path,
        source: ExportSource,
        quantize: Quantize | None,
        device: str,
    ) -> None:
        self._session = session
        self.path = path
        self.source: ExportSource = source
        self.quantize: Quantize | None = quantize
        self.device = device
        self._input_names = tuple(value.name for value in session.get_inputs())
        outputs = [value.name for value in session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]

    def __repr__(self) -> str:
        return (
            f"OnnxModel(path={str(self.path)!r}, source={self.source!r}, "
            f"quantize={self.quantize!r}, device={self.device!r})"
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs the graph takes, in graph order."""
        return self._input_names

    @property
    def providers(self) -> tuple[str, ...]:
        """The execution providers the session runs on, preferred first."""
        return tuple(self._session.get_providers())

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits for one padded batch, like the torch model's ``forward(...).logits``.

        Args:
            input_ids: ``(batch, sequence)`` token ids, padded on the right.
            attention_mask: ``(batch, sequence)``, 1 for real tokens and 0 for padding.
            token_type_ids: ``(batch, sequence)`` segment ids, or ``None`` (zeros when the
                graph takes them; ignored when it does not).

        Returns:
            float32 logits: ``(batch, labels)`` for a sequence head, ``(batch, sequence,
            labels)`` for a token head.
        """
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or np.shape(attention_mask) != ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must be (batch, sequence) arrays of one shape; "
                f"got {ids.shape} and {np.shape(attention_mask)}"
            )
        feed = {
            "input_ids": ids,
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = (
                np.zeros_like(ids)
                if token_type_ids is None
                else np.ascontiguousarray(token_type_ids, dtype=np.int64)
            )
        (logits,) = self._session.run([self._output], feed)
        return np.asarray(logits, dtype=np.float32)


def load_onnx_model(
    checkpoint: str | Path,
    *,
    task: HeadKind,
    input_names: Sequence[str],
    quantize: Quantize | None = None,
    device: str = "cpu",
    intra_op_threads: int | None = None,
    opset: int = DEFAULT_OPSET,
    cache_dir: str | Path | None = None,
    load_model: Callable[[], Any] | None = None,
) -> OnnxModel:
    """Get the checkpoint's ONNX graph (shipped, cached or exported) and open a session on it.

    Args:
        checkpoint: A local checkpoint directory (for a hub model, its snapshot folder).
        task: ``"sequence"`` or ``"token"``: which head the checkpoint has.
        input_names: The inputs the torch model takes (used for an export).
        quantize: ``"int8"`` for dynamic int8 (faster on CPU, scores not exact); ``None``
            for fp32, which matches torch within 1e-5.
        device: ``"cpu"`` (CPUExecutionProvider) or ``"cuda[:N]"`` (CUDAExecutionProvider,
            which needs ``onnxruntime-gpu``). int8 graphs run on the CPU only.
        intra_op_threads: Threads per forward pass; defaults to ``torch.get_num_threads()``,
            the cores the torch back-end would use.
        opset: The ONNX opset of an export.
        cache_dir: Where exports are cached; see the module docstring for the default.
        load_model: Returns the float32 CPU transformers model to export; called only when
            an export is needed. Defaults to loading ``checkpoint`` with transformers.

    Returns:
        The loaded :class:`OnnxModel`.

    Raises:
        ImportError: onnxruntime or onnx is not installed (the message names the extra).
        RuntimeError: CUDA was asked for but this onnxruntime has no CUDA provider.
        ValueError: A bad ``quantize`` / ``device`` combination.
    """
    ort = _import_onnxruntime()
    providers = _providers(device, ort.get_available_providers())
    if quantize == "int8" and device != "cpu":
        raise ValueError(
            "quantize='int8' runs on the CPU only (dynamic int8 kernels are CPU kernels); "
            "use device='cpu', or quantize=None on the GPU"
        )
    path, source = prepare_onnx(
        checkpoint,
        task=task,
        input_names=input_names,
        quantize=quantize,
        opset=opset,
        cache_dir=cache_dir,
        load_model=load_model,
    )
    if intra_op_threads is None:
        import torch

        intra_op_threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, int(intra_op_threads))
    # One graph, run op after op: extra inter-op threads only compete with intra-op ones.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    return OnnxModel(session, path=path, source=source, quantize=quantize, device=device)
