"""Where and how a model runs: device, weight dtype and attention kernel choices.

Every function imports torch lazily, so importing the engine stays free of torch until a
model is actually resolved or loaded.
"""

from __future__ import annotations

import contextlib
import importlib.util

__all__ = ["attention_backends", "attention_candidates", "resolve_device", "resolve_dtype"]


def resolve_device(device: str) -> str:
    """The torch device for ``device``: itself, or for ``"auto"`` CUDA, then MPS, then CPU."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """The weight dtype for ``dtype`` on ``device``: ``"auto"`` is bf16/fp16 on GPUs, else fp32."""
    import torch

    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.startswith("mps"):
        return "float16"
    return "float32"


def attention_candidates(device: str, dtype: str) -> list[str]:
    """Attention kernels to try, fastest first, for this device and dtype."""
    candidates = ["sdpa"]
    if device.startswith("cuda") and dtype in ("float16", "bfloat16"):
        import torch

        major, _minor = torch.cuda.get_device_capability(torch.device(device))
        if major >= 8 and importlib.util.find_spec("flash_attn") is not None:
            candidates.insert(0, "flash_attention_2")
    return candidates


def attention_backends(device_type: str) -> contextlib.AbstractContextManager[None]:
    """Scope SDPA to kernels without per-shape planning on CUDA.

    PyTorch may pick cuDNN's attention for bf16/fp16 on recent GPUs. cuDNN builds an
    execution plan for every new (batch, length) shape, and a reranker sees a new shape on
    almost every call: measured on an H100, an unbucketed MiniLM-L6 forward ran about 4x
    slower than in float32 because of it. Flash / memory-efficient / math kernels have no
    such set-up. Scoped to our forward pass only; the process-wide setting is untouched.
    """
    if device_type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch without the scoped selector: keep its defaults
        return contextlib.nullcontext()
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(backends)
