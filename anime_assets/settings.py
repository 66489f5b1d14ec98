"""Where the product keeps its data. One environment variable moves everything.

ANIME_ASSETS_DATA (default: ./data) holds:
  episodes/   the inbox the sensor watches (video files; the file name gives the episode key)
  media/      the media store: <asset>/<episode>/<shot>/<file>
  lancedb/    the LanceDB tables
"""

from __future__ import annotations

import os
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".ts", ".flv")


def data_root(override: str | os.PathLike | None = None) -> Path:
    root = override or os.environ.get("ANIME_ASSETS_DATA") or "data"
    return Path(root).expanduser().resolve()


def episodes_dir(root: Path | None = None) -> Path:
    return (root or data_root()) / "episodes"


def media_dir(root: Path | None = None) -> Path:
    return (root or data_root()) / "media"


def lancedb_uri(root: Path | None = None) -> str:
    return str((root or data_root()) / "lancedb")
