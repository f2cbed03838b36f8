"""Cross-encoder reranking, relevance grading and evidence trimming for RAG.

One shared, batched engine per model in the process; three roles on it (reranker,
relevance grader, evidence highlighter); a pipeline that chains them. Framework adapters
live in ``crag_integrations.langchain`` and ``crag_integrations.llama_index`` and are
imported only on demand: ``import crag_integrations`` imports neither framework and loads
no model.

Example:
    >>> from crag_integrations import Reranker
    >>> reranker = Reranker(model="cross-encoder/ms-marco-MiniLM-L6-v2", top_n=3)
"""

from crag_integrations.config import EngineConfig
from crag_integrations.crag import (
    DEFAULT_LOWER,
    DEFAULT_UPPER,
    CragAction,
    CragEvaluation,
    CragEvaluator,
    KnowledgeRefiner,
    RefinedDocument,
    calibrate_thresholds,
    decide_action,
)
from crag_integrations.engine import CrossEncoderEngine, get_engine, release_engines
from crag_integrations.errors import IncompatibleModelError, ModelUnavailableError
from crag_integrations.pipeline import RerankGradeTrimPipeline
from crag_integrations.roles import EvidenceHighlighter, RelevanceGrader, Reranker
from crag_integrations.scoring import OSMOSIS_LABELS, OSMOSIS_RELEVANT_LABELS
from crag_integrations.types import (
    DroppedText,
    Grade,
    Highlight,
    ModelHead,
    PipelineResult,
    ProcessedText,
    RankedText,
    SequenceScores,
    Span,
    TokenScores,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LOWER",
    "DEFAULT_UPPER",
    "OSMOSIS_LABELS",
    "OSMOSIS_RELEVANT_LABELS",
    "CragAction",
    "CragEvaluation",
    "CragEvaluator",
    "CrossEncoderEngine",
    "DroppedText",
    "EngineConfig",
    "EvidenceHighlighter",
    "Grade",
    "Highlight",
    "IncompatibleModelError",
    "KnowledgeRefiner",
    "ModelHead",
    "ModelUnavailableError",
    "PipelineResult",
    "ProcessedText",
    "RankedText",
    "RefinedDocument",
    "RelevanceGrader",
    "RerankGradeTrimPipeline",
    "Reranker",
    "SequenceScores",
    "Span",
    "TokenScores",
    "__version__",
    "calibrate_thresholds",
    "decide_action",
    "get_engine",
    "release_engines",
]
