"""Tiny, randomly initialised checkpoints for tests, examples and benchmarks.

Nothing in this workplace (or in most CI systems) can download weights from the Hugging
Face hub, so tests build real checkpoints at run time and load them through exactly the
code path a hub model takes (``from_pretrained`` on a directory holding ``config.json``,
``model.safetensors`` and a fast tokenizer).

The weights are random: scores are deterministic for a given seed but carry no meaning.
``initializer_range`` defaults high so that different inputs get clearly different scores.

Example:
    >>> import tempfile
    >>> from crag_integrations.testing import save_tiny_checkpoint
    >>> path = save_tiny_checkpoint(tempfile.mkdtemp(), architecture="bert", num_labels=1)
    >>> (path / "config.json").exists()
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "TINY_TOKENIZER_CORPUS",
    "Architecture",
    "Head",
    "build_tiny_tokenizer",
    "save_tiny_checkpoint",
]

Architecture = Literal["bert", "modernbert", "deberta-v2"]
Head = Literal["sequence", "token"]

#: Sentences the tiny WordPiece tokenizer is trained on; words outside them fall back to
#: sub-word pieces or ``[UNK]``, which is what real tokenizers do with rare words.
TINY_TOKENIZER_CORPUS: tuple[str, ...] = (
    "What causes rain? Rain forms when water vapor in the atmosphere condenses into droplets.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "ModernBERT is a long-context encoder for NLP. It supports sequences up to 8192 tokens.",
    "Cross-encoders read the query and the document together and output a relevance score.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The capital of Japan is Tokyo, which is also its largest city.",
    "Retrieval augmented generation retrieves passages before the language model answers.",
    "A reranker sorts retrieved chunks so that the most relevant ones come first.",
    "Climate change affects urban infrastructure, water resources and public health.",
    "The mitochondria is the powerhouse of the cell and produces ATP.",
    "東京は日本の首都です。 Café naïve résumé — emoji 🚀 and numbers 1 2 3 4 5 6 7 8 9 0.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ . , ; : ! ? ' \" ( ) - _ / %",
)

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tiny_tokenizer(
    corpus: Sequence[str] = TINY_TOKENIZER_CORPUS,
    *,
    vocab_size: int = 600,
    model_max_length: int = 512,
    model_input_names: Sequence[str] = ("input_ids", "token_type_ids", "attention_mask"),
) -> Any:
    """Build a BERT-style WordPiece fast tokenizer from ``corpus`` with the `tokenizers` library.

    Returns a ``transformers.PreTrainedTokenizerFast`` with ``[CLS] a [SEP] b [SEP]`` pair
    templates, character offsets, and the usual special tokens.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The vocabulary is built deterministically from the corpus with the library's own
    # normalizer and pre-tokenizer: `tokenizers`' WordPieceTrainer breaks ties in hash order,
    # so its vocabulary (and hence every tiny checkpoint) would differ between processes.
    words: Counter[str] = Counter()
    for sentence in corpus:
        normalised = normalizer.normalize_str(sentence)
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalised))
    characters = sorted({char for word in words for char in word})
    vocab_tokens = [
        *_SPECIAL_TOKENS,
        *characters,
        *(f"##{char}" for char in characters),
    ]
    ranked_words = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    vocab_tokens += ranked_words[: max(0, vocab_size - len(vocab_tokens))]
    vocab = {token: index for index, token in enumerate(vocab_tokens)}

    tokenizer = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    cls_id = tokenizer.token_to_id("[CLS]")
    sep_id = tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast_tokenizer_class: Any = PreTrainedTokenizerFast
    return fast_tokenizer_class(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=list(model_input_names),
    )


def _model_config(
    architecture: Architecture,
    *,
    vocab_size: int,
    pad_token_id: int,
    cls_token_id: int,
    sep_token_id: int,
    max_position_embeddings: int,
    hidden_size: int,
    num_layers: int,
    initializer_range: float,
) -> Any:
    import transformers

    # Typed as Any: these configs take architecture-specific keywords their stubs omit.
    config_classes: dict[str, Any] = {
        "bert": transformers.BertConfig,
        "modernbert": transformers.ModernBertConfig,
        "deberta-v2": transformers.DebertaV2Config,
    }
    BertConfig = config_classes["bert"]
    ModernBertConfig = config_classes["modernbert"]
    DebertaV2Config = config_classes["deberta-v2"]

    heads = max(1, hidden_size // 16)
    if architecture == "bert":
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            intermediate_size=hidden_size * 2,
            max_position_embeddings=max_position_embeddings,
            pad_token_id=pad_token_id,
            initializer_range=initializer_range,
        )
    if architecture == "modernbert":
        return ModernBertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            intermediate_size=hidden_size * 2,
            max_position_embeddings=max_position_embeddings,
            pad_token_id=pad_token_id,
            cls_token_id=cls_token_id,
            sep_token_id=sep_token_id,
            bos_token_id=cls_token_id,
            eos_token_id=sep_token_id,
            local_attention=16,
            global_attn_every_n_layers=2,
            initializer_range=initializer_range,
        )
    if architecture == "deberta-v2":
        return DebertaV2Config(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            intermediate_size=hidden_size * 2,
            max_position_embeddings=max_position_embeddings,
            pad_token_id=pad_token_id,
            type_vocab_size=0,
            relative_attention=True,
            position_buckets=32,
            max_relative_positions=-1,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            initializer_range=initializer_range,
        )
    raise ValueError(
        f"unknown architecture {architecture!r}; choose 'bert', 'modernbert' or 'deberta-v2'"
    )


def save_tiny_checkpoint(
    directory: str | Path,
    *,
    architecture: Architecture = "bert",
    head: Head = "sequence",
    num_labels: int = 1,
    id2label: Mapping[int, str] | None = None,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_position_embeddings: int = 512,
    model_max_length: int | None = None,
    initializer_range: float = 0.3,
) -> Path:
    """Build a randomly initialised checkpoint and save it to ``directory``.

    Args:
        directory: Where to write ``config.json``, the weights and the tokenizer files.
        architecture: ``"bert"``, ``"modernbert"`` or ``"deberta-v2"``.
        head: ``"sequence"`` (``AutoModelForSequenceClassification``) or ``"token"``
            (``AutoModelForTokenClassification``).
        num_labels: Number of output labels of the head.
        id2label: Label names; defaults to ``LABEL_i`` names (``O``/``EVIDENCE`` for a
            two-label token head).
        seed: Seed for the random weights, so a checkpoint can be rebuilt identically.
        hidden_size: Width of the tiny encoder.
        num_layers: Depth of the tiny encoder.
        max_position_embeddings: Positions the model supports.
        model_max_length: The tokenizer's ``model_max_length`` (defaults to
            ``max_position_embeddings``).
        initializer_range: Standard deviation of the random weights; high so scores differ.

    Returns:
        The directory, as a ``Path``.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    input_names = (
        ("input_ids", "token_type_ids", "attention_mask")
        if architecture == "bert"
        else ("input_ids", "attention_mask")
    )
    tokenizer = build_tiny_tokenizer(
        model_max_length=model_max_length or max_position_embeddings,
        model_input_names=input_names,
    )
    config = _model_config(
        architecture,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        max_position_embeddings=max_position_embeddings,
        hidden_size=hidden_size,
        num_layers=num_layers,
        initializer_range=initializer_range,
    )
    if id2label is None:
        if head == "token" and num_labels == 2:
            id2label = {0: "O", 1: "EVIDENCE"}
        else:
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    if len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} names but num_labels is {num_labels}")
    config.num_labels = num_labels
    config.id2label = {int(i): str(name) for i, name in id2label.items()}
    config.label2id = {str(name): int(i) for i, name in id2label.items()}

    auto_class: Any = (
        AutoModelForTokenClassification if head == "token" else AutoModelForSequenceClassification
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto_class.from_config(config)
    model.eval()
    from transformers.utils import logging

    hf_logging: Any = logging  # its progress-bar toggles are untyped

    # Saving a 100 kB checkpoint needs no progress bar; restore the caller's setting after.
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(path)
    return path
