"""Shared fixtures: tiny, randomly initialised checkpoints built once per test session.

Each checkpoint is saved to a session temporary directory and loaded through exactly the
path a hub model takes (``from_pretrained`` on a directory). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from crag_integrations import release_engines
from crag_integrations.testing import save_tiny_checkpoint

OSMOSIS = ("ADDR_DIRECT", "ADDR_PARTIAL", "NOADDR_ON", "NOADDR_TANGENTIAL", "NOADDR_OFF")


def pytest_configure(config: pytest.Config) -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny checkpoint the suite uses, by name.

    ``<arch>-rerank`` (one label), ``<arch>-binary`` (two labels named not_relevant /
    relevant), ``<arch>-osmosis`` (five OSMoSIS labels), ``<arch>-token`` (O / EVIDENCE),
    for ``bert``, ``modernbert`` and ``deberta-v2``.
    """
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    built: dict[str, Path] = {}
    for seed, arch in enumerate(("bert", "modernbert", "deberta-v2")):
        built[f"{arch}-rerank"] = save_tiny_checkpoint(
            root / f"{arch}-rerank", architecture=arch, num_labels=1, seed=seed
        )
        built[f"{arch}-binary"] = save_tiny_checkpoint(
            root / f"{arch}-binary",
            architecture=arch,
            num_labels=2,
            id2label={0: "not_relevant", 1: "relevant"},
            seed=seed + 10,
        )
        built[f"{arch}-osmosis"] = save_tiny_checkpoint(
            root / f"{arch}-osmosis",
            architecture=arch,
            num_labels=5,
            id2label=dict(enumerate(OSMOSIS)),
            seed=seed + 20,
        )
        built[f"{arch}-token"] = save_tiny_checkpoint(
            root / f"{arch}-token", architecture=arch, head="token", num_labels=2, seed=seed + 30
        )
    return built


@pytest.fixture(scope="session")
def repo_script() -> Callable[[str], ModuleType]:
    """Load a script of the repository (``"benchmarks/run.py"``) as a module, to call its
    functions; each call executes the file afresh."""
    root = Path(__file__).resolve().parents[1]

    def load(relative: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(Path(relative).stem, root / relative)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def reranker_path(checkpoints: dict[str, Path]) -> str:
    """The tiny BERT one-logit reranker, as a path string."""
    return str(checkpoints["bert-rerank"])


@pytest.fixture
def grader_path(checkpoints: dict[str, Path]) -> str:
    """The tiny BERT binary grader (labels not_relevant / relevant)."""
    return str(checkpoints["bert-binary"])


@pytest.fixture
def highlighter_path(checkpoints: dict[str, Path]) -> str:
    """The tiny BERT token classifier (labels O / EVIDENCE)."""
    return str(checkpoints["bert-token"])


@pytest.fixture(autouse=True, scope="module")
def _release_engines_after_module() -> Iterator[None]:
    """Free every engine after each test module so modules cannot leak state."""
    yield
    release_engines()
