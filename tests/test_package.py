"""Package hygiene: public API, import cost, and the one-way dependency direction."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import crag_integrations

PACKAGE = Path(crag_integrations.__file__).parent

#: Modules allowed to import each heavy dependency (STYLE.md: only the engine, the test
#: model builder and the training code touch torch/transformers; only the adapters touch a
#: framework).
ALLOWED_IMPORTERS = {
    "torch": {"engine", "testing", "training"},
    "transformers": {"engine", "testing", "training"},
    "sentence_transformers": {"training"},
    "tokenizers": {"testing"},
    "langchain_core": {"langchain"},
    "langchain_classic": set(),
    "langchain_community": set(),
    "llama_index": {"llama_index"},
    "langgraph": set(),
}


def test_public_api_is_pinned() -> None:
    """The top-level __all__ is exactly this list (changing it is a deliberate act)."""
    assert sorted(crag_integrations.__all__) == sorted(
        [
            "DEFAULT_LOWER",
            "DEFAULT_UPPER",
            "CragAction",
            "CragEvaluation",
            "CragEvaluator",
            "KnowledgeRefiner",
            "RefinedDocument",
            "calibrate_thresholds",
            "decide_action",
            "OSMOSIS_LABELS",
            "OSMOSIS_RELEVANT_LABELS",
            "CrossEncoderEngine",
            "DroppedText",
            "EngineConfig",
            "EvidenceHighlighter",
            "Grade",
            "Highlight",
            "IncompatibleModelError",
            "ModelHead",
            "ModelUnavailableError",
            "PipelineResult",
            "ProcessedText",
            "RankedText",
            "RelevanceGrader",
            "Reranker",
            "RerankGradeTrimPipeline",
            "SequenceScores",
            "Span",
            "TokenScores",
            "__version__",
            "get_engine",
            "release_engines",
        ]
    )
    for name in crag_integrations.__all__:
        assert hasattr(crag_integrations, name), name


def test_importing_the_package_is_light() -> None:
    """`import crag_integrations` loads no framework, no torch and no model."""
    code = (
        "import sys, crag_integrations, crag_integrations.crag;"
        "heavy = [m for m in ('torch', 'transformers', 'langchain_core', 'llama_index',"
        " 'sentence_transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_dependencies_point_one_way() -> None:
    """Only the engine/test builder/training import torch; only adapters import frameworks."""
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        imported = _top_level_imports(path)
        for dependency, allowed in ALLOWED_IMPORTERS.items():
            if dependency in imported and path.stem not in allowed:
                offenders.append(f"{path.name} imports {dependency}")
    assert offenders == []


def test_type_information_is_shipped() -> None:
    """py.typed marks the package as typed for mypy/pyright users."""
    assert (PACKAGE / "py.typed").exists()
