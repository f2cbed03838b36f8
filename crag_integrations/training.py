"""Fine-tune rerankers, graders and highlighters, and measure checkpoints on real data.

Three trainers, one per role, each writing a ``save_pretrained`` directory (weights, config and
fast tokenizer) that ``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``
``.from_pretrained(path)`` loads, and therefore the engine too:

* :func:`train_reranker`: a one-logit cross-encoder trained with sentence-transformers'
  ``CrossEncoderTrainer``. ``objective="bce"`` uses binary cross-entropy with ``pos_weight``
  (negatives per positive) on labelled pairs, or on (query, positive) pairs with negatives
  mined by a bi-encoder (``mine_hard_negatives``). ``objective="distill"`` is listwise
  distillation (ListNet) from a bi-encoder's cosine scores over candidate lists, optionally
  boosted by known positive labels.
* :func:`train_grader`: sequence classification with N labels and optional class weights
  (Hugging Face ``Trainer``).
* :func:`train_highlighter`: token classification from (query, context, evidence character
  spans); labels are aligned through the fast tokenizer's offsets, and long contexts are split
  into overlapping windows (``stride``) as at inference.

Inputs are ``.jsonl``/``.json``/``.csv``/``.parquet`` files, a ``datasets.Dataset`` or a list of
dicts. The ``evaluate_*`` functions run a checkpoint and score it with the pure metrics of
:mod:`crag_integrations.evaluation`.

torch, transformers, sentence-transformers and datasets are imported inside the functions, so
importing this module is cheap. Training needs the ``train`` extra
(``pip install "crag-integrations[train]"``).

Example:
    >>> from crag_integrations.training import train_grader
    >>> rows = [{"query": "rain?", "document": "Rain is water.", "label": 1}]
    >>> summary = train_grader(rows, "path/to/base", "out/grader")  # doctest: +SKIP
    >>> print(summary.format())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crag_integrations.config import EngineConfig
from crag_integrations.errors import IncompatibleModelError
from crag_integrations.evaluation import (
    ClassificationMetrics,
    RankingMetrics,
    RankingQuery,
    SpanExample,
    SpanMetrics,
    classification_metrics,
    evaluate_ranking,
    rank_by_scores,
    span_metrics,
)
from crag_integrations.scoring import (
    best_window,
    evidence_label_mask,
    evidence_probabilities,
    extract_spans,
    relevant_label_mask,
    softmax,
)

if TYPE_CHECKING:
    from crag_integrations.engine import CrossEncoderEngine

__all__ = [
    "DataSource",
    "TrainingSummary",
    "evaluate_bi_encoder",
    "evaluate_grader",
    "evaluate_highlighter",
    "evaluate_reranker",
    "load_rows",
    "predict_labels",
    "predict_spans",
    "score_pairs",
    "train_grader",
    "train_highlighter",
    "train_reranker",
]

Row = dict[str, Any]
#: A file path (jsonl/json/csv/parquet), a ``datasets.Dataset`` or rows as dicts.
DataSource = str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Any
Span = tuple[int, int]


@dataclass(frozen=True)
class TrainingSummary:
    """What a training run did.

    Attributes:
        task: ``"reranker"``, ``"grader"`` or ``"highlighter"``.
        output_dir: The saved checkpoint.
        base_model: The checkpoint training started from.
        num_examples: Training examples after preprocessing (pairs, lists or windows).
        num_steps: Optimiser steps taken.
        epochs: Epochs run.
        train_loss: Mean training loss reported by the trainer.
        seconds: Wall-clock training time.
        details: Task-specific facts (objective, pos_weight, label names, ...).
    """

    task: str
    output_dir: Path
    base_model: str
    num_examples: int
    num_steps: int
    epochs: float
    train_loss: float
    seconds: float
    details: Mapping[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        """A short human-readable summary."""
        extra = ", ".join(f"{k}={v}" for k, v in self.details.items())
        return (
            f"trained {self.task} from {self.base_model}: {self.num_examples} examples, "
            f"{self.num_steps} steps, {self.epochs:g} epochs, loss {self.train_loss:.4f}, "
            f"{self.seconds:.1f}s -> {self.output_dir}" + (f" ({extra})" if extra else "")
        )

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "task": self.task,
            "output_dir": str(self.output_dir),
            "base_model": self.base_model,
            "num_examples": self.num_examples,
            "num_steps": self.num_steps,
            "epochs": self.epochs,
            "train_loss": self.train_loss,
            "seconds": self.seconds,
            **{k: v for k, v in self.details.items() if _jsonable(v)},
        }


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def load_rows(source: DataSource) -> list[Row]:
    """Read training or evaluation rows from a file, a ``datasets`` object or dicts.

    Args:
        source: A ``.jsonl``/``.json``/``.csv``/``.parquet`` path, a ``datasets.Dataset`` (or a
            ``DatasetDict`` with a ``train`` split), or a sequence of mappings. In CSV files,
            cells holding JSON lists (spans, candidate lists) are decoded.

    Returns:
        The rows as plain dicts.

    Raises:
        ValueError: If the file type is unknown or the source is empty.
    """
    rows: list[Row]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
        elif suffix == ".json":
            with path.open(encoding="utf-8") as handle:
                loaded = json.load(handle)
            rows = list(loaded) if isinstance(loaded, list) else list(loaded["data"])
        elif suffix in {".csv", ".tsv"}:
            import csv

            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
                rows = [{k: _decode_cell(v) for k, v in row.items()} for row in reader]
        elif suffix == ".parquet":
            import pyarrow.parquet as pq  # type: ignore[import-untyped]  # pyarrow ships no stubs

            rows = pq.read_table(path).to_pylist()
        else:
            raise ValueError(
                f"unknown data file type {suffix!r}; use .jsonl, .json, .csv or .parquet"
            )
    elif _is_dataset_dict(source):
        splits: Any = source
        rows = [dict(r) for r in splits["train"]]
    else:
        rows = [dict(r) for r in source]
    if not rows:
        raise ValueError("the training/evaluation data is empty")
    return rows


def _is_dataset_dict(source: Any) -> bool:
    return (
        hasattr(source, "keys") and "train" in source and hasattr(source["train"], "column_names")
    )


def _decode_cell(value: str) -> Any:
    stripped = value.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def _require(rows: Sequence[Row], columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(
            f"{what} needs columns {sorted(columns)}; missing {missing} (have {sorted(rows[0])})"
        )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _bf16_default(bf16: bool | None) -> bool:
    if bf16 is not None:
        return bf16
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


# --------------------------------------------------------------------------------------
# Reranker
# --------------------------------------------------------------------------------------


def train_reranker(
    data: DataSource,
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    objective: Literal["bce", "distill"] = "bce",
    query_column: str = "query",
    document_column: str = "document",
    positive_column: str = "positive",
    label_column: str = "label",
    documents_column: str = "documents",
    scores_column: str = "scores",
    labels_column: str = "labels",
    hard_negatives: int = 0,
    bi_encoder: str | os.PathLike[str] | None = None,
    pos_weight: float | None = None,
    teacher_scale: float = 20.0,
    label_boost: float = 0.0,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 32,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_length: int = 256,
    bf16: bool | None = None,
    seed: int = 12,
    show_progress: bool = True,
) -> TrainingSummary:
    """Fine-tune a one-logit cross-encoder reranker.

    Data layouts (column names configurable):

    * labelled pairs ``{query, document, label}`` (label 1/0) for ``objective="bce"``;
    * (query, positive) pairs ``{query, positive}`` for ``objective="bce"`` with
      ``hard_negatives > 0``: ``mine_hard_negatives`` retrieves that many negatives per
      positive with the ``bi_encoder`` over all positives in the data (labelled pairs with
      label 1 are mined for too, adding to their own negatives);
    * candidate lists ``{query, documents[, scores][, labels]}`` for ``objective="distill"``:
      the target of each list is ``softmax(teacher_scale * scores + label_boost * labels)``,
      trained with ListNet. Missing ``scores`` are the ``bi_encoder``'s cosine similarities.
      Labels only add to the teacher, so an unjudged candidate (label 0) is left to the teacher
      rather than pushed down as a negative.

    Args:
        data: Training rows (see :func:`load_rows`).
        base_model: Starting checkpoint (a cross-encoder or any encoder; a new one-logit head is
            added when it has none).
        output_dir: Where the checkpoint is saved.
        objective: ``"bce"`` or ``"distill"``.
        query_column: Query text column.
        document_column: Document column of labelled pairs.
        positive_column: Positive-document column of (query, positive) pairs.
        label_column: 0/1 label column of labelled pairs.
        documents_column: Candidate-list column for distillation.
        scores_column: Teacher scores column (one float per candidate) for distillation.
        labels_column: Known labels per candidate for distillation (optional).
        hard_negatives: Negatives to mine per positive with ``bi_encoder`` (``bce`` only).
        bi_encoder: A sentence-transformers bi-encoder for mining or teacher scores.
        pos_weight: BCE weight of positives; defaults to negatives per positive in the data.
        teacher_scale: Multiplier of the teacher's cosine scores (inverse temperature).
        label_boost: Added to the scaled teacher score of candidates labelled relevant.
        epochs: Training epochs.
        max_steps: Stop after this many steps (``-1``: run all epochs).
        batch_size: Pairs (``bce``) or candidate lists (``distill``) per step.
        learning_rate: Peak learning rate.
        warmup_ratio: Share of steps spent warming up.
        weight_decay: AdamW weight decay.
        max_length: Token budget of a (query, document) pair.
        bf16: Mixed precision; defaults to on when a bf16-capable GPU is present.
        seed: Random seed.
        show_progress: Show progress bars.

    Returns:
        The training summary.

    Raises:
        ValueError: If the data does not fit the objective.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, ListNetLoss

    start = time.perf_counter()
    rows = load_rows(data)
    out = Path(output_dir)
    random.seed(seed)
    teacher = SentenceTransformer(str(bi_encoder)) if bi_encoder is not None else None
    details: dict[str, Any] = {"objective": objective}

    if objective == "bce":
        pairs = _labelled_pairs(
            rows,
            query_column=query_column,
            document_column=document_column,
            positive_column=positive_column,
            label_column=label_column,
        )
        if hard_negatives > 0:
            if teacher is None:
                raise ValueError("hard_negatives needs a bi_encoder to mine with")
            pairs += _mine_negatives(pairs, teacher, hard_negatives, show_progress)
        n_pos = sum(1 for p in pairs if p["label"] >= 0.5)
        n_neg = len(pairs) - n_pos
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                f"BCE needs positives and negatives; got {n_pos} positives and {n_neg} negatives "
                "(give labelled pairs, or set hard_negatives with a bi_encoder)"
            )
        weight = pos_weight if pos_weight is not None else n_neg / n_pos
        details.update(positives=n_pos, negatives=n_neg, pos_weight=round(weight, 4))
        random.shuffle(pairs)
        train_dataset = Dataset.from_dict(
            {
                "query": [p["query"] for p in pairs],
                "document": [p["document"] for p in pairs],
                "label": [float(p["label"]) for p in pairs],
            }
        )
        num_examples = len(pairs)
    elif objective == "distill":
        lists = _candidate_lists(
            rows,
            teacher,
            query_column=query_column,
            documents_column=documents_column,
            scores_column=scores_column,
            labels_column=labels_column,
            document_column=document_column,
            label_column=label_column,
            show_progress=show_progress,
        )
        targets = [
            [
                teacher_scale * s + label_boost * lab
                for s, lab in zip(item["scores"], item["labels"], strict=True)
            ]
            for item in lists
        ]
        details.update(
            lists=len(lists),
            candidates=sum(len(item["documents"]) for item in lists),
            teacher_scale=teacher_scale,
            label_boost=label_boost,
        )
        train_dataset = Dataset.from_dict(
            {
                "query": [item["query"] for item in lists],
                "documents": [item["documents"] for item in lists],
                "labels": targets,
            }
        )
        num_examples = len(lists)
    else:
        raise ValueError(f"unknown objective {objective!r}; use 'bce' or 'distill'")

    model = CrossEncoder(str(base_model), num_labels=1, max_length=max_length)
    if objective == "bce":
        loss: torch.nn.Module = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(weight))
    else:
        loss = ListNetLoss(model, mini_batch_size=256)
    use_bf16 = _bf16_default(bf16)
    args = CrossEncoderTrainingArguments(
        **_warmup(CrossEncoderTrainingArguments, warmup_ratio),
        output_dir=str(out),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        bf16=use_bf16,
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=max(1, _steps(num_examples, batch_size, epochs, max_steps) // 20),
        report_to="none",
        disable_tqdm=not show_progress,
        dataloader_drop_last=False,
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss)
    result = trainer.train()
    model.save_pretrained(str(out))
    summary = TrainingSummary(
        task="reranker",
        output_dir=out,
        base_model=str(base_model),
        num_examples=num_examples,
        num_steps=int(result.global_step),
        epochs=float(result.metrics.get("epoch", epochs)),
        train_loss=float(result.training_loss),
        seconds=time.perf_counter() - start,
        details={**details, "bf16": use_bf16, "max_length": max_length},
    )
    if show_progress:
        print(summary.format(), file=sys.stderr)
    return summary


def _warmup(arguments_class: Any, ratio: float) -> dict[str, Any]:
    """Warm-up as a ratio: ``warmup_ratio`` in transformers 4, a float ``warmup_steps`` in 5."""
    import inspect

    if "warmup_ratio" in inspect.signature(arguments_class.__init__).parameters:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def _steps(n: int, batch_size: int, epochs: float, max_steps: int) -> int:
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(n / batch_size) * math.ceil(epochs))


def _labelled_pairs(
    rows: Sequence[Row],
    *,
    query_column: str,
    document_column: str,
    positive_column: str,
    label_column: str,
) -> list[Row]:
    if label_column in rows[0]:
        _require(rows, (query_column, document_column, label_column), "labelled pairs")
        return [
            {
                "query": r[query_column],
                "document": r[document_column],
                "label": float(r[label_column]),
            }
            for r in rows
        ]
    if positive_column in rows[0]:
        _require(rows, (query_column, positive_column), "(query, positive) pairs")
        return [
            {"query": r[query_column], "document": r[positive_column], "label": 1.0} for r in rows
        ]
    raise ValueError(
        f"BCE training needs labelled pairs ({query_column}, {document_column}, {label_column}) "
        f"or (query, positive) pairs ({query_column}, {positive_column}); got {sorted(rows[0])}"
    )


def _mine_negatives(
    pairs: Sequence[Row], bi_encoder: Any, num_negatives: int, show_progress: bool
) -> list[Row]:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    positives = [p for p in pairs if p["label"] >= 0.5]
    corpus = list(dict.fromkeys(p["document"] for p in pairs))
    mined = mine_hard_negatives(
        Dataset.from_dict(
            {
                "query": [p["query"] for p in positives],
                "positive": [p["document"] for p in positives],
            }
        ),
        bi_encoder,
        corpus=corpus,
        num_negatives=num_negatives,
        range_min=1,
        range_max=max(num_negatives * 4, 20),
        # A candidate scoring within 5% of the positive is too likely to be an unlabelled
        # positive (judgments are incomplete), so it is not used as a negative.
        relative_margin=0.05,
        sampling_strategy="top",
        output_format="labeled-pair",
        verbose=show_progress,
    )
    columns = mined.column_names
    return [
        {"query": r[columns[0]], "document": r[columns[1]], "label": 0.0}
        for r in mined
        if float(r[columns[2]]) < 0.5
    ]


def _candidate_lists(
    rows: Sequence[Row],
    teacher: Any,
    *,
    query_column: str,
    documents_column: str,
    scores_column: str,
    labels_column: str,
    document_column: str,
    label_column: str,
    show_progress: bool,
) -> list[Row]:
    if documents_column in rows[0]:
        _require(rows, (query_column, documents_column), "candidate lists")
        lists = [
            {
                "query": r[query_column],
                "documents": list(r[documents_column]),
                "scores": list(r[scores_column]) if r.get(scores_column) is not None else None,
                "labels": list(r[labels_column])
                if r.get(labels_column) is not None
                else [0.0] * len(r[documents_column]),
            }
            for r in rows
        ]
    else:
        _require(rows, (query_column, document_column), "candidate lists or pairs")
        grouped: dict[str, Row] = {}
        for r in rows:
            item = grouped.setdefault(
                r[query_column],
                {"query": r[query_column], "documents": [], "scores": None, "labels": []},
            )
            item["documents"].append(r[document_column])
            item["labels"].append(float(r.get(label_column, 0.0)))
        lists = list(grouped.values())
    missing = [item for item in lists if item["scores"] is None]
    if missing:
        if teacher is None:
            raise ValueError(
                "distillation needs teacher scores: give a scores column or a bi_encoder"
            )
        for item, scores in zip(
            missing, _cosine_scores(teacher, missing, show_progress), strict=True
        ):
            item["scores"] = scores
    for item in lists:
        if not (len(item["documents"]) == len(item["scores"]) == len(item["labels"])):
            raise ValueError(f"candidate list of {item['query']!r} has mismatched lengths")
    return lists


def _cosine_scores(
    bi_encoder: Any, lists: Sequence[Row], show_progress: bool, batch_size: int = 128
) -> list[list[float]]:
    texts = list(dict.fromkeys(d for item in lists for d in item["documents"]))
    queries = list(dict.fromkeys(item["query"] for item in lists))
    doc_emb = bi_encoder.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_tensor=True,
        show_progress_bar=show_progress,
    )
    query_emb = bi_encoder.encode(
        queries,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_tensor=True,
        show_progress_bar=show_progress,
    )
    doc_index = {t: i for i, t in enumerate(texts)}
    query_index = {q: i for i, q in enumerate(queries)}
    result = []
    for item in lists:
        q = query_emb[query_index[item["query"]]]
        d = doc_emb[[doc_index[t] for t in item["documents"]]]
        result.append([float(x) for x in (d @ q).float().cpu()])
    return result


# --------------------------------------------------------------------------------------
# Grader
# --------------------------------------------------------------------------------------


def train_grader(
    data: DataSource,
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    query_column: str = "query",
    document_column: str = "document",
    label_column: str = "label",
    labels: Sequence[str | int] | None = None,
    class_weights: Sequence[float] | Literal["balanced"] | None = None,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 32,
    learning_rate: float = 3e-5,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_length: int = 256,
    bf16: bool | None = None,
    seed: int = 12,
    show_progress: bool = True,
) -> TrainingSummary:
    """Fine-tune a sequence classifier that grades (query, document) pairs into N labels.

    Args:
        data: Rows with query, document and label columns (see :func:`load_rows`).
        base_model: Starting checkpoint.
        output_dir: Where the checkpoint is saved.
        query_column: Query text column.
        document_column: Document text column.
        label_column: Label column (ints or names).
        labels: The label names in id order; defaults to the sorted labels in the data. They
            become the checkpoint's ``id2label``.
        class_weights: Cross-entropy weight per label id, or ``"balanced"``
            (``n / (num_labels * count)``, as scikit-learn).
        epochs: Training epochs.
        max_steps: Stop after this many steps (``-1``: run all epochs).
        batch_size: Pairs per step.
        learning_rate: Peak learning rate.
        warmup_ratio: Share of steps spent warming up.
        weight_decay: AdamW weight decay.
        max_length: Token budget of a pair.
        bf16: Mixed precision; defaults to on when a bf16-capable GPU is present.
        seed: Random seed.
        show_progress: Show progress bars.

    Returns:
        The training summary.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start = time.perf_counter()
    rows = load_rows(data)
    _require(rows, (query_column, document_column, label_column), "grader training")
    names = [str(x) for x in labels] if labels is not None else _label_names(rows, label_column)
    label2id = {name: i for i, name in enumerate(names)}
    targets = [_label_id(r[label_column], label2id, names) for r in rows]
    weights = _class_weights(class_weights, targets, len(names))
    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    encoded = tokenizer(
        [str(r[query_column]) for r in rows],
        [str(r[document_column]) for r in rows],
        truncation=True,
        max_length=max_length,
    )
    features = [
        {**{k: encoded[k][i] for k in encoded}, "labels": targets[i]} for i in range(len(rows))
    ]
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_model),
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id=label2id,
        ignore_mismatched_sizes=True,
    )
    summary = _run_trainer(
        task="grader",
        model=model,
        tokenizer=tokenizer,
        features=features,
        base_model=base_model,
        output_dir=output_dir,
        class_weights=weights,
        token_level=False,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        bf16=bf16,
        seed=seed,
        show_progress=show_progress,
        start=start,
        details={
            "labels": names,
            "label_counts": dict(Counter(names[t] for t in targets)),
            "class_weights": [round(w, 4) for w in weights] if weights else None,
            "max_length": max_length,
        },
    )
    return summary


def _label_names(rows: Sequence[Row], column: str) -> list[str]:
    values = {r[column] for r in rows}
    try:
        return [str(v) for v in sorted(values, key=lambda v: (int(v), str(v)))]
    except (TypeError, ValueError):
        return sorted(str(v) for v in values)


def _label_id(value: Any, label2id: Mapping[str, int], names: Sequence[str]) -> int:
    key = str(value)
    if key not in label2id:
        raise ValueError(f"label {value!r} is not one of {list(names)}")
    return label2id[key]


def _class_weights(
    spec: Sequence[float] | Literal["balanced"] | None, targets: Sequence[int], num_labels: int
) -> list[float] | None:
    if spec is None:
        return None
    if spec == "balanced":
        counts = Counter(targets)
        return [
            len(targets) / (num_labels * counts[i]) if counts[i] else 0.0 for i in range(num_labels)
        ]
    weights = [float(w) for w in spec]
    if len(weights) != num_labels:
        raise ValueError(f"got {len(weights)} class weights for {num_labels} labels")
    return weights


def _run_trainer(
    *,
    task: str,
    model: Any,
    tokenizer: Any,
    features: list[dict[str, Any]],
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    class_weights: Sequence[float] | None,
    token_level: bool,
    epochs: float,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_ratio: float,
    weight_decay: float,
    bf16: bool | None,
    seed: int,
    show_progress: bool,
    start: float,
    details: Mapping[str, Any],
) -> TrainingSummary:
    import torch
    from transformers import (
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    weight_tensor = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    class _WeightedTrainer(Trainer):
        """A ``Trainer`` whose cross-entropy weighs the classes."""

        def compute_loss(  # type: ignore[no-untyped-def]
            self, model, inputs, return_outputs=False, num_items_in_batch=None
        ):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits
            loss_fn = torch.nn.CrossEntropyLoss(
                weight=weight_tensor.to(logits.device) if weight_tensor is not None else None,
                ignore_index=-100,
            )
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
            return (loss, outputs) if return_outputs else loss

    out = Path(output_dir)
    use_bf16 = _bf16_default(bf16)
    args = TrainingArguments(
        **_warmup(TrainingArguments, warmup_ratio),
        output_dir=str(out),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        bf16=use_bf16,
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=max(1, _steps(len(features), batch_size, epochs, max_steps) // 20),
        report_to="none",
        disable_tqdm=not show_progress,
    )
    collator = (
        DataCollatorForTokenClassification(tokenizer)
        if token_level
        else DataCollatorWithPadding(tokenizer)
    )
    trainer = _WeightedTrainer(
        model=model,
        args=args,
        train_dataset=_ListDataset(features),
        data_collator=collator,
        processing_class=tokenizer,
    )
    result = trainer.train()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    summary = TrainingSummary(
        task=task,
        output_dir=out,
        base_model=str(base_model),
        num_examples=len(features),
        num_steps=int(result.global_step),
        epochs=float(result.metrics.get("epoch", epochs)),
        train_loss=float(result.training_loss),
        seconds=time.perf_counter() - start,
        details={**details, "bf16": use_bf16},
    )
    if show_progress:
        print(summary.format(), file=sys.stderr)
    return summary


class _ListDataset:
    """A map-style dataset over pre-tokenised features (no ``datasets`` dependency)."""

    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


# --------------------------------------------------------------------------------------
# Highlighter
# --------------------------------------------------------------------------------------


def train_highlighter(
    data: DataSource,
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    query_column: str = "query",
    context_column: str = "context",
    spans_column: str = "spans",
    class_weights: Sequence[float] | Literal["balanced"] | None = None,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_length: int = 512,
    stride: int = 128,
    bf16: bool | None = None,
    seed: int = 12,
    show_progress: bool = True,
) -> TrainingSummary:
    """Fine-tune a token classifier that marks evidence in a context (labels ``O``/``EVIDENCE``).

    Each context token is labelled ``EVIDENCE`` when its character offsets overlap a gold span;
    query and special tokens are ignored (-100). Contexts longer than ``max_length`` are split
    into windows overlapping by ``stride`` tokens, the way inference windows them. Rows with no
    spans are irrelevant rows: all their tokens are ``O``.

    Args:
        data: Rows with query, context and spans columns; spans are ``[start, end]`` character
            offsets into the context (see :func:`load_rows`).
        base_model: Starting checkpoint (needs a fast tokenizer).
        output_dir: Where the checkpoint is saved.
        query_column: Query text column.
        context_column: Context text column.
        spans_column: Evidence spans column.
        class_weights: Cross-entropy weight of ``O`` and ``EVIDENCE``, or ``"balanced"``.
        epochs: Training epochs.
        max_steps: Stop after this many steps (``-1``: run all epochs).
        batch_size: Windows per step.
        learning_rate: Peak learning rate.
        warmup_ratio: Share of steps spent warming up.
        weight_decay: AdamW weight decay.
        max_length: Tokens per window.
        stride: Overlapping tokens between consecutive windows.
        bf16: Mixed precision; defaults to on when a bf16-capable GPU is present.
        seed: Random seed.
        show_progress: Show progress bars.

    Returns:
        The training summary.

    Raises:
        ValueError: If the tokenizer is not a fast tokenizer or a span is out of range.
    """
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    start = time.perf_counter()
    rows = load_rows(data)
    _require(rows, (query_column, context_column, spans_column), "highlighter training")
    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    if not tokenizer.is_fast:
        raise ValueError("highlighter training needs a fast tokenizer (for character offsets)")
    features: list[dict[str, Any]] = []
    for row in rows:
        context = str(row[context_column])
        spans = [_span(s, len(context)) for s in row[spans_column] or []]
        features.extend(
            _token_windows(tokenizer, str(row[query_column]), context, spans, max_length, stride)
        )
    targets = [lab for f in features for lab in f["labels"] if lab >= 0]
    weights = _class_weights(class_weights, targets, 2)
    model = AutoModelForTokenClassification.from_pretrained(
        str(base_model),
        num_labels=2,
        id2label={0: "O", 1: "EVIDENCE"},
        label2id={"O": 0, "EVIDENCE": 1},
        ignore_mismatched_sizes=True,
    )
    return _run_trainer(
        task="highlighter",
        model=model,
        tokenizer=tokenizer,
        features=features,
        base_model=base_model,
        output_dir=output_dir,
        class_weights=weights,
        token_level=True,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        bf16=bf16,
        seed=seed,
        show_progress=show_progress,
        start=start,
        details={
            "rows": len(rows),
            "evidence_tokens": sum(targets),
            "tokens": len(targets),
            "max_length": max_length,
            "stride": stride,
        },
    )


def _span(value: Any, limit: int) -> Span:
    if isinstance(value, Mapping):
        start, end = int(value["start"]), int(value["end"])
    else:
        start, end = int(value[0]), int(value[1])
    if not 0 <= start < end <= limit:
        raise ValueError(f"span {value!r} is outside the context of {limit} characters")
    return start, end


def _token_windows(
    tokenizer: Any,
    query: str,
    context: str,
    spans: Sequence[Span],
    max_length: int,
    stride: int,
) -> list[dict[str, Any]]:
    encoded = tokenizer(
        query,
        context,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    windows = []
    for w in range(len(encoded["input_ids"])):
        sequence_ids = encoded.sequence_ids(w)
        labels = []
        for seq_id, (start, end) in zip(sequence_ids, encoded["offset_mapping"][w], strict=True):
            if seq_id != 1 or end <= start:
                labels.append(-100)
            else:
                labels.append(int(any(start < e and s < end for s, e in spans)))
        feature = {
            k: encoded[k][w]
            for k in encoded
            if k not in {"offset_mapping", "overflow_to_sample_mapping"}
        }
        feature["labels"] = labels
        windows.append(feature)
    return windows


# --------------------------------------------------------------------------------------
# Inference used by evaluation
# --------------------------------------------------------------------------------------


def _device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _engine(
    model_path: str | os.PathLike[str],
    device: str | None,
    max_length: int,
    batch_size: int,
    stride: int = 128,
) -> CrossEncoderEngine:
    """The shared engine for a checkpoint: evaluation scores exactly as inference does."""
    from crag_integrations.engine import get_engine

    return get_engine(
        EngineConfig(
            model=str(model_path),
            device=device or "auto",
            max_length=max_length,
            stride=stride,
            token_budget=batch_size * max_length,
            cache_size=0,  # every pair is scored once; caching would only hold memory
        )
    )


def score_pairs(
    model_path: str | os.PathLike[str],
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 512,
    device: str | None = None,
    show_progress: bool = False,
) -> list[float]:
    """Relevance logits of a one-logit cross-encoder for (query, document) pairs, in order.

    Runs on the shared engine, so a document longer than ``max_length`` is read in windows
    and scored by its best window, exactly as :class:`~crag_integrations.Reranker` does.

    Args:
        model_path: Checkpoint directory.
        queries: Query per pair.
        documents: Document per pair.
        batch_size: Windows of ``max_length`` tokens per forward pass (the token budget).
        max_length: Tokens per window.
        device: ``"cpu"``, ``"cuda"``...; defaults to the engine's automatic choice.
        show_progress: Print how many pairs are being scored.

    Returns:
        One score per pair (the logit of the best window).

    Raises:
        IncompatibleModelError: The checkpoint is not a one-logit cross-encoder (a grader's
            first logit is not a relevance score, so it is refused rather than misread).
    """
    pairs = list(zip(queries, documents, strict=True))
    engine = _engine(model_path, device, max_length, batch_size)
    engine.require_one_logit(
        "reranker scoring",
        "Measure graders with evaluate_grader and highlighters with evaluate_highlighter.",
    )
    if show_progress:
        print(f"scoring {len(pairs)} pairs with {model_path}", file=sys.stderr)
    results = engine.score_pairs(pairs)
    return [r.window_logits[best_window(r.window_logits)][0] for r in results]


def predict_labels(
    model_path: str | os.PathLike[str],
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 512,
    device: str | None = None,
    show_progress: bool = False,
) -> list[str]:
    """Arg-max label names of a grader for (query, document) pairs, in order.

    Runs on the shared engine. For a document read in several windows, the deciding window
    is the most relevant one when the checkpoint's labels say which are relevant (as in
    :class:`~crag_integrations.RelevanceGrader`), else the most confident one.

    Args:
        model_path: Checkpoint directory (its ``id2label`` names the labels).
        queries: Query per pair.
        documents: Document per pair.
        batch_size: Windows of ``max_length`` tokens per forward pass (the token budget).
        max_length: Tokens per window.
        device: Device; defaults to the engine's automatic choice.
        show_progress: Print how many pairs are being graded.

    Returns:
        One label name per pair.
    """
    pairs = list(zip(queries, documents, strict=True))
    if show_progress:
        print(f"grading {len(pairs)} pairs with {model_path}", file=sys.stderr)
    engine = _engine(model_path, device, max_length, batch_size)
    results = engine.score_pairs(pairs)
    names = engine.head.id2label if results else ()
    try:
        mask: tuple[bool, ...] | None = relevant_label_mask(names) if len(names) > 1 else None
    except IncompatibleModelError:
        mask = None
    labels = []
    for result in results:
        windows = result.window_logits
        if mask is not None or len(names) == 1:
            logits = windows[best_window(windows, mask)]
        else:
            logits = max(windows, key=lambda w: max(softmax(w)))
        labels.append(names[max(range(len(logits)), key=logits.__getitem__)])
    return labels


def predict_spans(
    model_path: str | os.PathLike[str],
    queries: Sequence[str],
    contexts: Sequence[str],
    *,
    threshold: float = 0.5,
    merge_gap_chars: int = 20,
    min_span_chars: int = 10,
    max_length: int = 512,
    stride: int = 128,
    batch_size: int = 32,
    device: str | None = None,
    show_progress: bool = False,
) -> list[list[Span]]:
    """Evidence character spans predicted by a token-classification highlighter.

    Runs on the shared engine with the highlighter's own span rules
    (:func:`crag_integrations.scoring.extract_spans`): long contexts are windowed with
    ``stride`` tokens of overlap and the token probabilities of overlapping windows are
    averaged, exactly as :class:`~crag_integrations.EvidenceHighlighter` does.

    Args:
        model_path: Checkpoint directory.
        queries: Query per row.
        contexts: Context per row.
        threshold: Probability from which a token is evidence.
        merge_gap_chars: Largest gap merged between two spans.
        min_span_chars: Shortest span kept.
        max_length: Tokens per window.
        stride: Overlapping tokens between windows.
        batch_size: Windows of ``max_length`` tokens per forward pass (the token budget).
        device: Device; defaults to the engine's automatic choice.
        show_progress: Print how many rows are being read.

    Returns:
        Spans per row, as ``(start, end)`` character offsets.
    """
    pairs = list(zip(queries, contexts, strict=True))
    if show_progress:
        print(f"highlighting {len(pairs)} rows with {model_path}", file=sys.stderr)
    engine = _engine(model_path, device, max_length, batch_size, stride)
    results = engine.token_scores(pairs)
    if not results:
        return []
    mask = evidence_label_mask(engine.head.id2label)
    predicted = []
    for context, result in zip(contexts, results, strict=True):
        evidence = evidence_probabilities(result.probabilities, mask)
        spans = extract_spans(
            context,
            result.offsets,
            evidence,
            threshold=threshold,
            min_span_chars=min_span_chars,
            merge_gap_chars=merge_gap_chars,
        )
        predicted.append([(span.start, span.end) for span in spans])
    return predicted


# --------------------------------------------------------------------------------------
# Evaluation of checkpoints
# --------------------------------------------------------------------------------------


def evaluate_reranker(
    model_path: str | os.PathLike[str],
    queries: Sequence[RankingQuery],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    k: int = 10,
    relevance_threshold: int = 1,
    max_length: int = 512,
    batch_size: int = 64,
    device: str | None = None,
    show_progress: bool = False,
) -> RankingMetrics:
    """Rerank each query's candidates with a cross-encoder and score the run.

    Args:
        model_path: One-logit cross-encoder checkpoint.
        queries: Queries with candidates (e.g. from ``load_trec_dl``).
        qrels: Graded judgments.
        k: Cut-off for nDCG and MRR.
        relevance_threshold: Grade counted as relevant by MRR and MAP (2 on TREC DL).
        max_length: Token budget of a pair.
        batch_size: Pairs per forward pass.
        device: Device; defaults to CUDA when available.
        show_progress: Show a progress bar.

    Returns:
        The ranking metrics.
    """
    flat_q = [q.query for q in queries for _ in q.doc_ids]
    flat_d = [t for q in queries for t in q.texts]
    scores = score_pairs(
        model_path,
        flat_q,
        flat_d,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        show_progress=show_progress,
    )
    return evaluate_ranking(
        _rerank(queries, scores), qrels, k=k, relevance_threshold=relevance_threshold
    )


def evaluate_bi_encoder(
    model_path: str | os.PathLike[str],
    queries: Sequence[RankingQuery],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    k: int = 10,
    relevance_threshold: int = 1,
    batch_size: int = 64,
    device: str | None = None,
    show_progress: bool = False,
) -> RankingMetrics:
    """Rerank each query's candidates by a bi-encoder's cosine similarity and score the run.

    Args:
        model_path: A sentence-transformers bi-encoder directory.
        queries: Queries with candidates.
        qrels: Graded judgments.
        k: Cut-off for nDCG and MRR.
        relevance_threshold: Grade counted as relevant by MRR and MAP.
        batch_size: Texts per forward pass.
        device: Device; defaults to CUDA when available.
        show_progress: Show a progress bar.

    Returns:
        The ranking metrics.
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device=_device(device))
    lists = [{"query": q.query, "documents": list(q.texts)} for q in queries]
    model.eval()
    scores = [s for item in _cosine_scores(model, lists, show_progress, batch_size) for s in item]
    return evaluate_ranking(
        _rerank(queries, scores), qrels, k=k, relevance_threshold=relevance_threshold
    )


def _rerank(queries: Sequence[RankingQuery], flat_scores: Sequence[float]) -> dict[str, list[str]]:
    rankings: dict[str, list[str]] = {}
    offset = 0
    for q in queries:
        n = len(q.doc_ids)
        rankings[q.qid] = rank_by_scores(list(q.doc_ids), list(flat_scores[offset : offset + n]))
        offset += n
    return rankings


def evaluate_grader(
    model_path: str | os.PathLike[str],
    data: DataSource,
    *,
    query_column: str = "query",
    document_column: str = "document",
    label_column: str = "label",
    positive_label: str | None = None,
    max_length: int = 512,
    batch_size: int = 64,
    device: str | None = None,
    show_progress: bool = False,
) -> ClassificationMetrics:
    """Run a grader over labelled pairs and compute classification metrics.

    Args:
        model_path: Sequence-classification checkpoint.
        data: Rows with query, document and label columns; labels are compared as strings
            with the checkpoint's ``id2label`` names.
        query_column: Query text column.
        document_column: Document text column.
        label_column: Gold label column.
        positive_label: Positive class for binary metrics; defaults to the label with the
            highest id (``"1"`` for 0/1 graders).
        max_length: Token budget of a pair.
        batch_size: Pairs per forward pass.
        device: Device; defaults to CUDA when available.
        show_progress: Show a progress bar.

    Returns:
        The classification metrics.
    """
    rows = load_rows(data)
    _require(rows, (query_column, document_column, label_column), "grader evaluation")
    predicted = predict_labels(
        model_path,
        [str(r[query_column]) for r in rows],
        [str(r[document_column]) for r in rows],
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        show_progress=show_progress,
    )
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_path))
    names = [str(config.id2label[i]) for i in sorted(int(k) for k in config.id2label)]
    positive = positive_label if positive_label is not None else names[-1]
    gold = [str(r[label_column]) for r in rows]
    return classification_metrics(gold, predicted, labels=names, positive_label=positive)


def evaluate_highlighter(
    model_path: str | os.PathLike[str],
    data: DataSource,
    *,
    query_column: str = "query",
    context_column: str = "context",
    spans_column: str = "spans",
    threshold: float = 0.5,
    merge_gap_chars: int = 20,
    min_span_chars: int = 10,
    max_length: int = 512,
    stride: int = 128,
    device: str | None = None,
    show_progress: bool = False,
) -> SpanMetrics:
    """Run a highlighter over rows with gold spans and compute the all-row span metrics.

    Args:
        model_path: Token-classification checkpoint.
        data: Rows with query, context and spans columns (empty spans: irrelevant row).
        query_column: Query text column.
        context_column: Context text column.
        spans_column: Gold spans column.
        threshold: Probability from which a token is evidence.
        merge_gap_chars: Largest gap merged between predicted spans.
        min_span_chars: Shortest predicted span kept.
        max_length: Tokens per window.
        stride: Overlapping tokens between windows.
        device: Device; defaults to CUDA when available.
        show_progress: Show a progress bar.

    Returns:
        The span metrics.
    """
    rows = load_rows(data)
    _require(rows, (query_column, context_column, spans_column), "highlighter evaluation")
    contexts = [str(r[context_column]) for r in rows]
    predicted = predict_spans(
        model_path,
        [str(r[query_column]) for r in rows],
        contexts,
        threshold=threshold,
        merge_gap_chars=merge_gap_chars,
        min_span_chars=min_span_chars,
        max_length=max_length,
        stride=stride,
        device=device,
        show_progress=show_progress,
    )
    examples = [
        SpanExample(c, [_span(s, len(c)) for s in (r[spans_column] or [])], p)
        for r, c, p in zip(rows, contexts, predicted, strict=True)
    ]
    return span_metrics(examples)
