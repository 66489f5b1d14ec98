#!/usr/bin/env bash
# Set up, then run the test suite (offline; builds its fixture clips on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Tests are hermetic: models come from stand-ins saved through the real loading code, never the hub.
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
