"""Opt-in checks on real checkpoints, given by local path; skipped when not provided.

    CRAG_QUALITY_RERANKER=/models/ms-marco-MiniLM-L6-v2 \
    CRAG_QUALITY_GRADER=/models/CRAG-ModernBert \
    CRAG_QUALITY_HIGHLIGHTER=/models/acl-verbatim-modernbert \
    python -m pytest -m quality
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from crag_integrations import EvidenceHighlighter, RelevanceGrader, Reranker

pytestmark = pytest.mark.quality

QUERY = "What causes rain?"
RELEVANT = "Rain forms when water vapour in the atmosphere condenses into droplets that fall."
IRRELEVANT = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris."


def _path(variable: str) -> str:
    value = os.environ.get(variable)
    if not value or not os.path.isdir(value):
        pytest.skip(f"set {variable} to a local checkpoint directory to run this check")
    return value


def test_real_reranker_matches_sentence_transformers_and_ranks_sensibly() -> None:
    """On a real reranker: ST parity, and the relevant passage outranks the irrelevant one."""
    import torch
    from sentence_transformers import CrossEncoder

    path = _path("CRAG_QUALITY_RERANKER")
    reranker = Reranker(model=path)
    ours = reranker.score(QUERY, [RELEVANT, IRRELEVANT])
    theirs = CrossEncoder(path, device="cpu").predict(
        [(QUERY, RELEVANT), (QUERY, IRRELEVANT)], activation_fn=torch.nn.Identity()
    )
    np.testing.assert_allclose(ours, np.ravel(theirs), atol=1e-3)
    assert ours[0] > ours[1]


def test_real_grader_separates_relevant_from_irrelevant() -> None:
    """A real relevance grader gives the relevant passage the higher probability."""
    grades = RelevanceGrader(model=_path("CRAG_QUALITY_GRADER")).grade(
        QUERY, [RELEVANT, IRRELEVANT]
    )
    assert grades[0].probability > grades[1].probability


def test_real_highlighter_reproduces_the_model_card_example() -> None:
    """acl-verbatim's card: the first two sentences, and only they, are evidence (at 0.2)."""
    context = (
        "ModernBERT is a long-context encoder for NLP. "
        "It supports sequences up to 8192 tokens. "
        "Unlike earlier BERT variants, it uses rotary position embeddings."
    )
    [result] = EvidenceHighlighter(model=_path("CRAG_QUALITY_HIGHLIGHTER")).highlight(
        "What is ModernBERT?", [context]
    )
    assert result.spans
    assert "ModernBERT is a long-context encoder for NLP." in result.trimmed_text
    assert "It supports sequences up to 8192 tokens." in result.trimmed_text
    # The card's example output stops there: the third sentence is not evidence. Without
    # this, a highlighter that marks whole contexts would pass.
    assert "rotary position embeddings" not in result.trimmed_text
