"""Fine-tune rerankers, graders and highlighters, and measure the checkpoints.

Three trainers, one per role, each writing a ``save_pretrained`` directory (weights, config and
fast tokenizer) that ``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``
``.from_pretrained(path)`` loads, and therefore the engine too:

* :func:`train_reranker` (:mod:`~crag_integrations.training.reranker`): a one-logit
  cross-encoder, by BCE on labelled or mined pairs, or by listwise distillation from a
  bi-encoder.
* :func:`train_grader` (:mod:`~crag_integrations.training.grader`): sequence classification
  with N labels and optional class weights.
* :func:`train_highlighter` (:mod:`~crag_integrations.training.highlighter`): token
  classification from (query, context, evidence character spans), windowed as at inference.

Inputs are ``.jsonl``/``.json``/``.csv``/``.parquet`` files, a ``datasets.Dataset`` or a list of
dicts (:func:`load_rows`, :mod:`~crag_integrations.training.data`). The checkpoint measures
(``score_pairs``, ``predict_labels``, ``predict_spans`` and the ``evaluate_*`` functions, which
go through the roles) live in :mod:`crag_integrations.evaluation.checkpoints` and are
re-exported here; :func:`evaluate_bi_encoder` (a bi-encoder is no role) lives in
:mod:`~crag_integrations.training.bi_encoder`.

torch, transformers, sentence-transformers and datasets are imported inside the functions, so
importing this package is cheap. Training needs the ``train`` extra
(``pip install "crag-integrations[train]"``).

Example:
    >>> from crag_integrations.training import train_grader
    >>> rows = [{"query": "rain?", "document": "Rain is water.", "label": 1}]
    >>> summary = train_grader(rows, "path/to/base", "out/grader")  # doctest: +SKIP
    >>> print(summary.format())  # doctest: +SKIP
"""

from crag_integrations.evaluation.checkpoints import (
    evaluate_grader,
    evaluate_highlighter,
    evaluate_reranker,
    predict_labels,
    predict_spans,
    score_pairs,
)
from crag_integrations.training.bi_encoder import evaluate_bi_encoder
from crag_integrations.training.data import DataSource, load_rows
from crag_integrations.training.grader import train_grader
from crag_integrations.training.highlighter import train_highlighter
from crag_integrations.training.reranker import train_reranker
from crag_integrations.training.summary import TrainingSummary

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
