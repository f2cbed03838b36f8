"""Progress bars of model loading and training: off when a command is asked to be quiet."""

from __future__ import annotations

import os
import sys

__all__ = ["disable_progress_bars"]


def disable_progress_bars() -> None:
    """Silence the Hugging Face progress bars (weight loading, downloads) for this process.

    Sets ``HF_HUB_DISABLE_PROGRESS_BARS`` for libraries not yet imported (transformers reads
    it once, on import) and switches the bars off in those already imported.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        # Re-exported without __all__, which strict mypy reads as private.
        from huggingface_hub.utils import disable_progress_bars as disable_hub_bars  # type: ignore[attr-defined]

        disable_hub_bars()
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
