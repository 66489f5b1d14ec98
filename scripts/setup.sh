#!/usr/bin/env bash
# Install anime_assets into ./.venv from the package registries (idempotent; fast when nothing changed).
# Needs only Python 3.11. torch/torchvision are pinned to the releases this machine type keeps on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "error: Python 3.11 is required (found $("$PY" --version 2>&1))" >&2; exit 1
fi
stamp=.venv/.installed-$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  rm -f .venv/.installed-*; touch "$stamp"
fi
# Model files that ship inside pinned wheels (mediapipe's tflite models; mediapipe itself wants numpy<2,
# so only its files are taken): fetched and sha256-checked once, a no-op when present.
.venv/bin/python scripts/bundled_models.py --quiet
