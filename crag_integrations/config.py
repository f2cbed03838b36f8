"""Frozen engine configuration: the identity of a shared engine."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "Backend",
    "DType",
    "EngineConfig",
    "Quantize",
    "as_engine_config",
]

DType = Literal["auto", "float32", "float16", "bfloat16"]

#: What runs the forward passes: PyTorch (the default) or ONNX Runtime.
Backend = Literal["torch", "onnx"]

#: Weight quantisation of the ONNX back-end: dynamic int8 (CPU only, not exact).
Quantize = Literal["int8"]

_ONNX_DEVICE = re.compile(r"auto|cpu|cuda(?::\d+)?")

#: Default byte bound of a model's score cache (an estimate of what its entries hold).
DEFAULT_CACHE_BYTES = 256 * 2**20

#: ``(model string, working directory or "")`` -> the normalised model string. Configs are
#: built on every role call; without this, each one would ``stat`` the filesystem.
_NORMALISED: dict[tuple[str, str], str] = {}
_NORMALISED_MAX = 4_096


def _normalise_model(model: str) -> str:
    """``model`` with an existing directory made absolute, memoised per working directory.

    The first config naming an existing directory checks the filesystem; later ones reuse
    the answer (a relative name is looked up again after the working directory changes).
    Only directories are remembered: a name that is not one yet (a hub id, or a checkpoint
    still to be trained) is checked again next time, so ``"./m"`` and ``"/abs/m"`` are one
    engine whenever ``m`` exists.
    """
    expanded = os.path.expanduser(model)
    where = "" if os.path.isabs(expanded) else os.getcwd()
    known = _NORMALISED.get((model, where))
    if known is not None:
        return known
    path = Path(expanded)
    if not path.is_dir():
        return model
    normalised = str(path.resolve())
    # No lock (item assignment is atomic; a lost race only repeats the check), so nothing
    # here can be left locked in a forked child.
    if len(_NORMALISED) >= _NORMALISED_MAX:
        _NORMALISED.clear()
    _NORMALISED[(model, where)] = normalised
    return normalised


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Everything that identifies a shared engine; equal configs share one loaded model.

    Args:
        model: A Hugging Face hub id (``"cross-encoder/ms-marco-MiniLM-L6-v2"``) or a local
            directory holding ``config.json``, the weights and the tokenizer. Existing
            directories are stored as absolute paths, so ``"./m"`` and ``"/abs/m"`` are
            the same engine.
        revision: Hub revision (branch, tag or commit) to load; ignored for directories.
        device: ``"auto"`` (CUDA, then MPS, then CPU), or a torch device string.
        dtype: ``"auto"`` picks bfloat16 on CUDA devices that support it, else float16 on
            CUDA and MPS, and float32 on CPU (bfloat16 measured about 5x slower than
            float32 on the project's CPU machines).
        max_length: Tokens per window (query, text and special tokens). ``None`` uses the
            smaller of the tokenizer's ``model_max_length`` and the model's
            ``max_position_embeddings``.
        stride: Tokens of overlap between consecutive windows of a long text.
        token_budget: Maximum padded tokens per forward pass (batch size x longest
            sequence). ``None`` picks 2,048 on CPU (small batches stay in cache: measured
            1.7x faster than 16,384 on a 2-core machine) and 131,072 on accelerators.
        trust_remote_code: Allow custom modelling code from the checkpoint. Off unless
            you trust the repository.
        local_files_only: Never reach the network. ``None`` follows the environment
            (``HF_HUB_OFFLINE=1`` means offline).
        cache_dir: Hugging Face cache directory; ``None`` uses the user's default cache.
        max_wait_ms: How long the model's owner thread waits for more callers before it
            runs a drain that has not yet filled one ``token_budget`` (milliseconds; ``0``
            runs whatever is queued at once, the default). Callers that arrive while a
            forward pass runs are coalesced into the next one either way; a wait only helps
            callers that arrive staggered, and every lone caller pays it (measured on an
            H100 with MiniLM-L6: 2 ms cost a sequential caller about 30% throughput).
        max_queue: Requests that may wait for the owner thread at once; beyond that, sync
            callers block and async callers await (without blocking the event loop).
        cache_size: Scored ``(query, text)`` pairs remembered per loaded model (LRU), so
            repeated pairs cost no forward pass. ``0`` disables the cache for this engine.
        cache_bytes: Bound on the estimated bytes the score cache holds (keys and results);
            least recently used entries go first when either bound is reached. Engines
            sharing a model share its cache, whose bounds are the largest of theirs.
            ``0`` disables the cache for this engine. Default 256 MiB.
        compile: Run the model through ``torch.compile``, with sequence lengths padded to
            buckets (multiples of 64, then powers of two) so it does not recompile per
            batch. Worth it on GPUs for long-running services; the first batches of each
            bucket pay the compile time. Torch back-end only.
        backend: ``"torch"`` runs the transformers model; ``"onnx"`` runs it exported to ONNX
            with ONNX Runtime (``pip install "crag-integrations[onnx]"``): the same scores
            within 1e-5, at about torch's speed on CPU inside the engine (measured in
            ``docs/performance.md``; with ``quantize`` faster). The export is made once per
            checkpoint content and cached (see :mod:`crag_integrations.engine.onnx`).
            Float32 only (``dtype`` ``"auto"`` or ``"float32"``); ``device`` ``"cpu"``,
            ``"cuda[:N]"`` (needs ``onnxruntime-gpu``) or ``"auto"`` (CUDA when torch sees
            a GPU and ONNX Runtime has its CUDA provider, else the CPU).
        quantize: ``"int8"`` (with ``backend="onnx"``, on the CPU only) runs a dynamically
            quantised copy of the graph: about 1.5x faster on CPU, but the scores are no
            longer exact: on a trained MiniLM reranker logits moved by up to 1.0 and the
            per-query Kendall tau against fp32 was 0.86 (median), so rankings change, and a
            pair's score depends on the pairs sharing its batch (activation scales are per
            forward pass); ``device="auto"`` means the CPU.
            ``None`` (the default) keeps full precision.

    Example:
        >>> EngineConfig(model="cross-encoder/ms-marco-MiniLM-L6-v2", device="cpu").dtype
        'auto'
    """

    model: str
    revision: str | None = None
    device: str = "auto"
    dtype: DType = "auto"
    max_length: int | None = None
    stride: int = 128
    token_budget: int | None = None
    trust_remote_code: bool = False
    local_files_only: bool | None = None
    cache_dir: str | None = field(default=None)
    max_wait_ms: float = 0.0
    max_queue: int = 1024
    cache_size: int = 16_384
    cache_bytes: int = DEFAULT_CACHE_BYTES
    compile: bool = False
    backend: Backend = "torch"
    quantize: Quantize | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("EngineConfig.model must be a hub id or a local directory path")
        normalised = _normalise_model(self.model)
        if normalised != self.model:
            object.__setattr__(self, "model", normalised)
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(
                f"dtype must be 'auto', 'float32', 'float16' or 'bfloat16', not {self.dtype!r}"
            )
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, not {self.max_length}")
        if self.stride < 0:
            raise ValueError(f"stride must be >= 0, not {self.stride}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"token_budget must be positive, not {self.token_budget}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, not {self.max_wait_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {self.max_queue}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 disables it), not {self.cache_size}")
        if self.cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0 (0 disables it), not {self.cache_bytes}")
        self._check_backend()

    def _check_backend(self) -> None:
        if self.backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', not {self.backend!r}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', not {self.quantize!r}")
        if self.backend == "torch":
            if self.quantize is not None:
                raise ValueError(
                    f"quantize={self.quantize!r} needs backend='onnx' (the torch back-end runs "
                    "the weights at full precision)"
                )
            return
        if not _ONNX_DEVICE.fullmatch(self.device):
            raise ValueError(
                f"backend='onnx' runs on 'cpu', 'cuda[:N]' or 'auto', not device={self.device!r}; "
                "use backend='torch' for other devices"
            )
        if self.quantize == "int8" and self.device not in ("cpu", "auto"):
            raise ValueError(
                f"quantize='int8' runs on the CPU only (dynamic int8 kernels are CPU kernels), "
                f"not device={self.device!r}; use device='cpu', or quantize=None on the GPU"
            )
        if self.dtype not in ("auto", "float32"):
            raise ValueError(
                f"backend='onnx' runs the float32 graph, not dtype={self.dtype!r}; use "
                "dtype='auto' or 'float32' (or quantize='int8' on the CPU for speed)"
            )
        if self.compile:
            raise ValueError(
                "compile=True is for backend='torch' (torch.compile); ONNX Runtime optimises "
                "its graph itself"
            )

    @property
    def uses_cache(self) -> bool:
        """Whether engines of this configuration read and write the score cache."""
        return self.cache_size > 0 and self.cache_bytes > 0


_DEFAULT_CONFIGS: dict[tuple[str, str], EngineConfig] = {}


def as_engine_config(model: str | EngineConfig) -> EngineConfig:
    """``model`` as an :class:`EngineConfig`: a hub id or path becomes one with defaults.

    The config of a local directory is built once per working directory and then reused
    (roles call this on every call), so the steady state touches neither the filesystem nor
    a lock; a hub id is checked again each time (one ``stat``), since a directory of that
    name may appear later.

    Raises:
        TypeError: ``model`` is neither a string nor an ``EngineConfig``.
    """
    if isinstance(model, EngineConfig):
        return model
    if isinstance(model, str):
        where = "" if os.path.isabs(model) else os.getcwd()
        config = _DEFAULT_CONFIGS.get((model, where))
        if config is None:
            config = EngineConfig(model=model)
            # Only directories are remembered, as in _normalise_model: a name that is not
            # one yet may become one (a checkpoint still to be trained).
            if os.path.isdir(config.model):
                if len(_DEFAULT_CONFIGS) >= _NORMALISED_MAX:
                    _DEFAULT_CONFIGS.clear()
                _DEFAULT_CONFIGS[(model, where)] = config
        return config
    raise TypeError(f"model must be a hub id, a local path or an EngineConfig, not {model!r}")
