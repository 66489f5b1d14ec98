#!/usr/bin/env bash
# Set up, then run the test suite (offline; builds its fixture clips on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
