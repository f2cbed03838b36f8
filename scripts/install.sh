#!/usr/bin/env bash
# Install crag-integrations for development: CPU torch, the package with every extra, and
# the dev tools. Safe to re-run. Usage: bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# pip >= 25.1 understands PEP 735 dependency groups (--group dev).
"$PYTHON" -m pip install --quiet --upgrade "pip>=25.1"

# A CPU build of torch first, so the range in pyproject.toml is already satisfied and no
# multi-GB CUDA build is pulled in. This workplace keeps torch 2.13.0 (CPU) on disk; elsewhere
# PyTorch's CPU wheel index serves the same.
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet "torch==2.13.0" \
    || "$PYTHON" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
fi

"$PYTHON" -m pip install --quiet -e ".[all]" --group dev
"$PYTHON" -c "import crag_integrations, torch; print('crag-integrations', crag_integrations.__version__, 'with torch', torch.__version__)"
