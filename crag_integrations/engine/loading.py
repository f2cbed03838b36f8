"""Loading one checkpoint: what identifies the weights, the load itself and its load-time checks.

A model is loaded from a local directory or the Hugging Face cache with ``AutoConfig``, a
fast ``AutoTokenizer`` and ``AutoModelFor{Sequence,Token}Classification``. Its head is read
from ``config.json`` (never guessed from the name), its tokenizer must window long pairs
without losing text, and a model that cannot be had raises a
:class:`~crag_integrations.errors.ModelUnavailableError` that says how to provide it.

With ``backend="onnx"`` the same load runs (config, tokenizer, head, window limit, inputs
from the float32 CPU torch model), then the torch model is handed to
:func:`~crag_integrations.engine.onnx.load_onnx_model` to be exported if no shipped or
cached graph exists, and dropped: what stays in memory is the tokenizer and one ONNX Runtime
session.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crag_integrations.engine.devices import attention_candidates
from crag_integrations.errors import IncompatibleModelError, ModelUnavailableError
from crag_integrations.types import HeadKind, ModelHead

if TYPE_CHECKING:
    import torch

__all__ = [
    "LoadKey",
    "LoadedModel",
    "check_overflow_windows",
    "checkpoint_directory",
    "load_model",
    "read_head",
    "window_length_limit",
    "windows_cover_text",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadKey:
    """The part of an EngineConfig that decides which weights are in memory."""

    model: str
    revision: str | None
    device: str
    dtype: str
    trust_remote_code: bool
    local_files_only: bool | None
    cache_dir: str | None
    compile: bool = False
    #: ``"torch"`` or ``"onnx"``: torch and ONNX engines of one checkpoint are two models.
    backend: str = "torch"
    #: ``"int8"`` (ONNX only) or ``None``.
    quantize: str | None = None


@dataclass
class LoadedModel:
    """A model in memory with its tokenizer and what the engine needs to know about both."""

    model: Any
    tokenizer: Any
    head: ModelHead
    device: torch.device
    default_max_length: int
    input_names: tuple[str, ...]
    pad_token_id: int
    special_tokens_in_pair: int
    attention: str = "eager"
    compiled: bool = False
    #: Why ``default_max_length`` is the most a window can hold (for error messages).
    length_limit_reason: str = "the model's limit"
    #: ``"torch"`` (``model`` is the transformers model) or ``"onnx"`` (``model`` is an
    #: :class:`~crag_integrations.engine.onnx.OnnxModel`).
    backend: str = "torch"


def _offline_from_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _unavailable_message(key: LoadKey, exc: BaseException) -> str:
    looks_like_path = key.model.startswith(("/", "./", "../", "~")) or os.sep * 2 in key.model
    if looks_like_path:
        return (
            f"Model directory {key.model!r} does not exist or is not a complete checkpoint "
            f"(it needs config.json, the weights and the tokenizer files): {exc}"
        )
    offline = key.local_files_only or (key.local_files_only is None and _offline_from_env())
    how = (
        "Provide it in one of these ways: (1) on a machine with hub access run "
        f"`hf download {key.model}"
        + (f" --revision {key.revision}" if key.revision else "")
        + "` and copy the Hugging Face cache (HF_HOME, by default ~/.cache/huggingface) "
        "here; (2) pass the path of a local directory that holds config.json, the weights "
        "and the tokenizer instead of the hub id"
    )
    if offline:
        how += "; (3) or allow downloads by unsetting HF_HUB_OFFLINE / local_files_only"
    state = "is not available offline" if offline else "could not be downloaded or found"
    return f"Model {key.model!r} {state}. {how}. Underlying error: {exc}"


def windows_cover_text(
    text_offsets: Sequence[tuple[int, int]], window_offsets: Sequence[Sequence[tuple[int, int]]]
) -> bool:
    """Whether overflow windows together hold every token of the text (by char offsets)."""
    covered = {offset for window in window_offsets for offset in window}
    return all(offset in covered for offset in text_offsets)


_PROBE_QUERY = "what does the probe check"
_PROBE_TEXT = " ".join(
    f"{word} {number}" for number in range(40) for word in ("alpha", "river", "stone")
)


def check_overflow_windows(tokenizer: Any, model_name: str) -> None:
    """Fail loudly if this tokenizer's overflow windows lose text.

    Windows come from the fast tokenizer's own overflow mechanism. Some transformers
    releases truncate the overflow of pairs (seen with 5.17.0: a 96-token text came back as
    64 tokens in two windows), which would silently truncate long documents. A long probe
    text is windowed once at load time and every one of its tokens must reappear.

    Raises:
        IncompatibleModelError: The windows of the probe text miss some of its tokens.
    """
    # verbose=False: the probe is longer than small models' limit on purpose; without it
    # transformers warns "Token indices sequence length is longer than the specified
    # maximum sequence length ... will result in indexing errors" on every load.
    text = tokenizer(
        _PROBE_TEXT, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    text_offsets = [tuple(o) for o in text["offset_mapping"]]
    query_tokens = len(
        tokenizer(_PROBE_QUERY, add_special_tokens=False, verbose=False)["input_ids"]
    )
    room = max(8, len(text_offsets) // 4)
    encoding = tokenizer(
        _PROBE_QUERY,
        _PROBE_TEXT,
        truncation="only_second",
        max_length=query_tokens + tokenizer.num_special_tokens_to_add(pair=True) + room,
        stride=room // 4,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
        verbose=False,
    )
    windows = [
        [
            tuple(offset)
            for offset, sequence in zip(
                encoding["offset_mapping"][row], encoding.sequence_ids(row), strict=True
            )
            if sequence == 1
        ]
        for row in range(len(encoding["input_ids"]))
    ]
    if not windows_cover_text(text_offsets, windows):
        import transformers

        raise IncompatibleModelError(
            f"The tokenizer of {model_name!r} under transformers {transformers.__version__} "
            "drops text from overflow windows, so long documents would be silently "
            "truncated. Upgrade transformers (5.23 is tested; 5.17.0 is known to do this)."
        )


def _position_table_size(model: Any) -> int | None:
    """Positions an absolute position-embedding table can embed, or ``None`` without one.

    RoBERTa-style embeddings (those with a ``padding_idx``) number positions from
    ``padding_idx + 1``, so a 514-row table holds 512 positions.
    """
    import torch

    base = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    embeddings = getattr(base, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, torch.nn.Embedding):
        return None  # rotary (ModernBERT) or relative-only (DeBERTa-v2 without absolute)
    size = int(table.num_embeddings)
    padding = getattr(embeddings, "padding_idx", None)
    if isinstance(padding, int) and 0 <= padding < size:
        size -= padding + 1
    return size


def window_length_limit(model: Any, config: Any, tokenizer: Any) -> tuple[int, str]:
    """The most tokens one window may hold, and why.

    The smaller of the tokenizer's ``model_max_length`` (when it declares one: below a
    million) and the model's positions: its absolute position table where it has one (a
    longer window crashes inside torch), else ``max_position_embeddings`` (rotary and
    relative models run past it, but were not trained to). 512 when neither is known.
    """
    limits: list[tuple[int, str]] = []
    declared = int(tokenizer.model_max_length)
    if 0 < declared < 1_000_000:
        limits.append((declared, f"its tokenizer's model_max_length is {declared}"))
    table = _position_table_size(model)
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    if table is not None:
        limits.append((table, f"its position embeddings hold {table} positions"))
    elif positions > 0:
        limits.append((positions, f"its max_position_embeddings is {positions}"))
    if not limits:
        return 512, "it declares no limit; 512 is assumed"
    return min(limits)


def read_head(config: Any, model_name: str) -> ModelHead:
    """The head a checkpoint declares in ``config.json``: its kind and its labels.

    Raises:
        IncompatibleModelError: Neither a sequence- nor a token-classification architecture,
            or a head without labels.
    """
    architectures = list(getattr(config, "architectures", None) or [])
    auto_map = dict(getattr(config, "auto_map", None) or {})
    kind: HeadKind
    if any(a.endswith("ForTokenClassification") for a in architectures) or (
        "AutoModelForTokenClassification" in auto_map
    ):
        kind = "token"
    elif any(a.endswith("ForSequenceClassification") for a in architectures) or (
        "AutoModelForSequenceClassification" in auto_map
    ):
        kind = "sequence"
    else:
        raise IncompatibleModelError(
            f"{model_name!r} declares architectures {architectures or 'none'} in config.json; "
            "crag_integrations needs a *ForSequenceClassification checkpoint (reranker or "
            "grader) or a *ForTokenClassification checkpoint (highlighter). A bi-encoder or "
            "base model must be fine-tuned into a cross-encoder first (see docs/training.md)."
        )
    num_labels = int(getattr(config, "num_labels", 0) or 0)
    raw = dict(getattr(config, "id2label", None) or {})
    id2label = tuple(str(raw.get(i, raw.get(str(i), f"LABEL_{i}"))) for i in range(num_labels))
    if not id2label:
        raise IncompatibleModelError(f"{model_name!r} has a head with no labels")
    return ModelHead(kind=kind, id2label=id2label)


def load_model(key: LoadKey) -> LoadedModel:
    """Load the weights and fast tokenizer ``key`` names, on its device, in eval mode.

    Raises:
        ModelUnavailableError: The model is neither a complete local directory nor
            downloadable (or cached, offline); the message lists how to provide it.
        IncompatibleModelError: No fast tokenizer, an unsupported head, or a tokenizer
            whose overflow windows lose text.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    hub_kwargs: dict[str, Any] = {
        "revision": key.revision,
        "trust_remote_code": key.trust_remote_code,
        "cache_dir": key.cache_dir,
    }
    if key.local_files_only is not None:
        hub_kwargs["local_files_only"] = key.local_files_only
    try:
        config = AutoConfig.from_pretrained(key.model, **hub_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(key.model, use_fast=True, **hub_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(_unavailable_message(key, exc)) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise IncompatibleModelError(
            f"{key.model!r} has no fast (Rust) tokenizer; character offsets and windows need "
            "one. Convert it with `AutoTokenizer.from_pretrained(..., from_slow=True)` and "
            "save_pretrained, then load the saved directory."
        )
    head = read_head(config, key.model)
    check_overflow_windows(tokenizer, key.model)
    auto_class = (
        AutoModelForTokenClassification
        if head.kind == "token"
        else AutoModelForSequenceClassification
    )
    torch_dtype = getattr(torch, key.dtype)
    model_kwargs = dict(hub_kwargs, dtype=torch_dtype)
    model = None
    attention = "default"
    try:
        for candidate in attention_candidates(key.device, key.dtype):
            try:
                model = auto_class.from_pretrained(
                    key.model, attn_implementation=candidate, **model_kwargs
                )
            except (ValueError, ImportError) as exc:
                # The architecture has no such kernel (DeBERTa-v2 has no SDPA): try the next.
                logger.debug("%s unavailable for %s (%s)", candidate, key.model, exc)
                continue
            attention = candidate
            break
        if model is None:
            model = auto_class.from_pretrained(key.model, **model_kwargs)
    except OSError as exc:
        raise ModelUnavailableError(_unavailable_message(key, exc)) from exc
    device = torch.device(key.device)
    if key.backend != "onnx":
        # The ONNX export needs the float32 CPU model; its session goes to the device.
        model.to(device)
    model.eval()

    default_max_length, length_limit_reason = window_length_limit(model, config, tokenizer)

    accepted = set(inspect.signature(model.forward).parameters)
    input_names = tuple(
        name
        for name in ("input_ids", "attention_mask", "token_type_ids")
        if name in accepted and (name != "token_type_ids" or name in tokenizer.model_input_names)
    )
    if key.compile:
        model = torch.compile(model)
    if key.backend == "onnx":
        model = _load_onnx(key, model, head, input_names)
    pad = tokenizer.pad_token_id
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        head=head,
        device=device,
        default_max_length=default_max_length,
        input_names=input_names,
        pad_token_id=int(pad) if pad is not None else 0,
        special_tokens_in_pair=int(tokenizer.num_special_tokens_to_add(pair=True)),
        attention=attention,
        compiled=key.compile,
        length_limit_reason=length_limit_reason,
        backend=key.backend,
    )


def checkpoint_directory(key: LoadKey, commit: str | None) -> str:
    """The local folder holding the checkpoint's files: the directory itself, or for a hub
    id the snapshot folder of the commit that was just loaded (in the Hugging Face cache).

    Raises:
        ModelUnavailableError: The hub cache holds no snapshot of that commit.
    """
    if os.path.isdir(key.model):
        return key.model
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        key.model, "config.json", cache_dir=key.cache_dir, revision=commit or key.revision
    )
    if not isinstance(found, str):
        raise ModelUnavailableError(
            f"{key.model!r} was loaded, but its files are not in a Hugging Face cache snapshot "
            "that the ONNX back-end can export from; download it (`hf download "
            f"{key.model}`) or pass the path of a local checkpoint directory"
        )
    return os.path.dirname(found)


def _load_onnx(key: LoadKey, model: Any, head: ModelHead, input_names: tuple[str, ...]) -> Any:
    """Open the checkpoint's ONNX graph (shipped, cached, or exported now from ``model``)."""
    from crag_integrations.engine.onnx import load_onnx_model

    directory = checkpoint_directory(key, getattr(model.config, "_commit_hash", None))
    # The caller drops ``model`` once this returns: only the session serves.
    return load_onnx_model(
        directory,
        task=head.kind,
        input_names=input_names,
        quantize="int8" if key.quantize == "int8" else None,
        device=key.device,
        load_model=lambda: model,
    )
