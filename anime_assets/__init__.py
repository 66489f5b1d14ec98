"""anime_assets: a Dagster asset graph that turns anime episodes into a layered, searchable training dataset."""

__version__ = "0.1.0"

# Recorded in every LanceDB row: bump when a change alters what the pipeline writes.
PIPELINE_VERSION = "2026.11-a"
