#!/usr/bin/env bash
# Set up, run the whole asset graph on the bundled sample episode, then serve the Dagster UI
# on http://127.0.0.1:${PORT:-3000} (webserver + daemon, so the inbox sensor runs). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="$PWD" ANIME_ASSETS_DATA="${ANIME_ASSETS_DATA:-$PWD/data}"
mkdir -p "$ANIME_ASSETS_DATA/episodes"
# Online: fetch the best models into the Hugging Face cache (about 1.5 GB, once). Offline this fails
# in seconds and every stage uses the models shipped in registry packages, saying so in its log.
if [ "${DEMO_NO_PULL:-0}" != 1 ]; then
  .venv/bin/anime-assets models pull >/dev/null 2>&1 || echo "some models are not here; 'anime-assets models list' says which and why"
fi
.venv/bin/anime-assets ingest samples/sample_episode.mp4 --episode sample
.venv/bin/anime-assets status
[ "${DEMO_NO_UI:-0}" = 1 ] && exit 0
.venv/bin/dagster-daemon run -w workspace.yaml &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait' EXIT INT TERM
echo "Dagster UI: http://127.0.0.1:${PORT:-3000}  (drop more episodes into $ANIME_ASSETS_DATA/episodes/)"
.venv/bin/dagster-webserver -h 127.0.0.1 -p "${PORT:-3000}" -w workspace.yaml
