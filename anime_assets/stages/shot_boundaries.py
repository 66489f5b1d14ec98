"""Shot boundaries of an episode, from the frame index's 48x27 views (no second decode)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from anime_assets.keys import shot_key
from anime_assets.storage.media import MediaStore
from anime_assets.stages.frame_index import FrameIndex
from anime_assets.vision.shots import ShotDetection, detect_shots

ASSET = "shot_boundaries"
SHOTS_NAME = "shots.json"


def detect_episode_shots(index: FrameIndex, scorer=None) -> tuple[ShotDetection, float]:
    t0 = time.perf_counter()
    det = detect_shots(index.small_rgb, index.fps, transnet=scorer.predict if scorer is not None else None)
    return det, time.perf_counter() - t0


def shots_document(episode: str, index: FrameIndex, det: ShotDetection, detector: str) -> dict:
    shots = []
    for i, (start, end) in enumerate(det.shots):
        shots.append({
            "shot": shot_key(i), "start": int(start), "end": int(end),
            "start_pts": float(index.pts[start]) if start < index.n_frames else None,
            "end_pts": float(index.pts[end - 1]) if end - 1 < index.n_frames else None,
        })
    return {
        "episode": episode,
        "n_frames": int(index.n_frames),
        "fps": float(index.fps),
        "detector": detector,
        "shots": shots,
        "boundaries": [asdict(b) for b in det.boundaries],
        "flashes": [int(f) for f in det.flashes],
    }


def write_shots(store: MediaStore, episode: str, doc: dict) -> Path:
    return store.write_bytes(ASSET, episode, None, SHOTS_NAME, json.dumps(doc, indent=1, default=_json_default).encode())


def load_shots(store: MediaStore, episode: str) -> dict:
    path = store.path(ASSET, episode, None, SHOTS_NAME)
    if not path.exists():
        raise FileNotFoundError(f"episode {episode}: no shot boundaries yet (materialize shot_boundaries first)")
    return json.loads(path.read_text())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))
