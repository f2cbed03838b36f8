"""Package hygiene: public API, import cost, and the one-way dependency direction."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import crag_integrations

PACKAGE = Path(crag_integrations.__file__).parent

#: Modules allowed to import each heavy dependency, by the first part of their path inside
#: the package (``engine/runner.py`` is ``engine``). STYLE.md: only the engine, the test model
#: builder and the training code touch torch/transformers; only the adapters touch a framework.
ALLOWED_IMPORTERS = {
    "torch": {"engine", "testing", "training"},
    "transformers": {"engine", "testing", "training"},
    "sentence_transformers": {"training"},
    "tokenizers": {"testing"},
    "onnx": {"engine"},
    "onnxruntime": {"engine"},
    "langchain_core": {"langchain"},
    "langchain_classic": set(),
    "langchain_community": set(),
    "llama_index": {"llama_index"},
    "langgraph": set(),
    "ray": {"ray"},
    "fastapi": {"ray"},
    "starlette": {"ray"},
}

#: The layers, bottom up (STYLE.md's picture). A module may import from its own layer and
#: the ones below it, never from above; and nothing above the roles reaches the engine.
#: Every module of the package must match one pattern (first match wins; ``*`` ends a
#: pattern and matches any rest of the dotted name).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("values", ("types", "errors", "config", "inputs", "backends")),
    ("pure", ("scoring", "metadata", "evaluation.metrics", "evaluation.datasets")),
    ("engine", ("engine*", "testing", "training.*")),
    ("roles", ("roles", "by_query")),
    ("stages", ("pipeline", "crag", "evaluation.checkpoints")),
    ("options", ("options", "corpus")),
    ("adapters", ("langchain*", "llama_index*", "ray*")),
    ("facades", ("__init__", "evaluation", "training", "cli", "__main__")),
]
ENGINE_LAYER = next(i for i, (name, _) in enumerate(LAYERS) if name == "engine")
ROLES_LAYER = next(i for i, (name, _) in enumerate(LAYERS) if name == "roles")
#: Public facades re-export what lives below them (the engine included) and decide nothing.
FACADES = len(LAYERS) - 1


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name relative to it (``engine.runner``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _layer(module: str) -> int:
    for index, (_name, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if pattern.endswith("*"):
                if module.startswith(pattern[:-1]):
                    return index
            elif module == pattern:
                return index
    raise AssertionError(f"crag_integrations.{module} has no layer: add it to LAYERS")


def _package_imports(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports (absolute and relative), by dotted name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(
                alias.name.removeprefix("crag_integrations.")
                for alias in node.names
                if alias.name.startswith("crag_integrations.")
            )
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module == "crag_integrations":
                target = "__init__"
            elif node.module and node.module.startswith("crag_integrations."):
                target = node.module.removeprefix("crag_integrations.")
            else:
                continue
            names.add(target)
    return names


def test_every_module_has_a_layer_and_imports_point_down() -> None:
    """Walking every module (subpackages included): no import runs to a higher layer, and
    nothing above the roles imports the engine (only the roles talk to it)."""
    modules = _modules()
    offenders = []
    for module, path in modules.items():
        layer = _layer(module)
        for target in sorted(_package_imports(module, path)):
            known = target if target in modules else target.rsplit(".", 1)[0]
            assert known in modules, f"{module} imports an unknown module {target}"
            target_layer = _layer(known)
            if target_layer > layer:
                offenders.append(f"{module} ({LAYERS[layer][0]}) imports upward: {known}")
            elif ROLES_LAYER < layer < FACADES and target_layer == ENGINE_LAYER:
                offenders.append(f"{module} ({LAYERS[layer][0]}) reaches the engine: {known}")
    assert offenders == []


def test_the_layer_rules_catch_what_they_forbid() -> None:
    """The checker itself: the rules it applies flag an upward and an engine-reaching import."""
    assert _layer("engine.runner") == ENGINE_LAYER
    assert _layer("langchain.compressors") > _layer("options") > _layer("pipeline")
    assert _layer("pipeline") > ROLES_LAYER > ENGINE_LAYER > _layer("scoring")
    assert _package_imports("pipeline", PACKAGE / "pipeline.py") >= {"roles", "types"}
    assert "options" in _package_imports(
        "langchain.compressors", PACKAGE / "langchain" / "compressors.py"
    )


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


def test_heavy_dependencies_stay_where_they_belong() -> None:
    """Only the engine/test builder/training import torch; only adapters import frameworks."""
    offenders = []
    for module, path in _modules().items():
        owner = module.split(".")[0]
        imported = _top_level_imports(path)
        for dependency, allowed in ALLOWED_IMPORTERS.items():
            if dependency in imported and owner not in allowed:
                offenders.append(f"{module} imports {dependency}")
    assert offenders == []


def test_type_information_is_shipped() -> None:
    """py.typed marks the package as typed for mypy/pyright users."""
    assert (PACKAGE / "py.typed").exists()
