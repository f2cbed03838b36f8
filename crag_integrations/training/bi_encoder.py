"""Bi-encoders: cosine scores for distillation teachers and mined negatives, and their ranking.

A bi-encoder is no role of this package: it runs on sentence-transformers (imported inside
the functions), as a teacher for :func:`~crag_integrations.training.train_reranker` and as a
first-stage baseline for :func:`evaluate_bi_encoder`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from crag_integrations.evaluation.datasets import RankingQuery
from crag_integrations.evaluation.metrics import RankingMetrics, evaluate_ranking, rank_candidates

__all__ = ["cosine_scores", "evaluate_bi_encoder"]


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

    A bi-encoder is no role of this package, so it runs on sentence-transformers.

    Args:
        model_path: A sentence-transformers bi-encoder directory.
        queries: Queries with candidates.
        qrels: Graded judgments.
        k: Cut-off for nDCG and MRR.
        relevance_threshold: Grade counted as relevant by MRR and MAP.
        batch_size: Texts per forward pass.
        device: Device; defaults to CUDA when available, else CPU.
        show_progress: Show a progress bar.

    Returns:
        The ranking metrics.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    chosen = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = SentenceTransformer(str(model_path), device=chosen)
    lists = [{"query": q.query, "documents": list(q.texts)} for q in queries]
    model.eval()
    scores = [s for item in cosine_scores(model, lists, show_progress, batch_size) for s in item]
    return evaluate_ranking(
        rank_candidates(queries, scores), qrels, k=k, relevance_threshold=relevance_threshold
    )


def cosine_scores(
    bi_encoder: Any,
    lists: Sequence[Mapping[str, Any]],
    show_progress: bool,
    batch_size: int = 128,
) -> list[list[float]]:
    """A bi-encoder's cosine similarity of each list's query to each of its documents.

    Every distinct text is encoded once. Also the teacher of reranker distillation.

    Args:
        bi_encoder: A loaded ``SentenceTransformer``.
        lists: Mappings with ``"query"`` and ``"documents"``.
        show_progress: Show progress bars.
        batch_size: Texts per forward pass.

    Returns:
        One list of similarities per list, in document order.
    """
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
