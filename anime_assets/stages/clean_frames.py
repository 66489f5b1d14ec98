"""Clean frames of one shot: the final choice among the frame index's candidates.

The online pass already dropped holds, pans and black/white frames; here, with the
whole shot in view, repeats of earlier drawings, flash/impact bursts and transition
frames are dropped and keyframes picked. Kept images are hard links to the frame
index's candidate files (no re-encode); the shot folder is replaced atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anime_assets.keys import shot_index
from anime_assets.storage.media import MediaStore
from anime_assets.stages.frame_index import CANDIDATE_DIR, FrameIndex, candidate_name
from anime_assets.stages.frame_index import ASSET as INDEX_ASSET
from anime_assets.vision.frames import FrameDecision, select_shot_frames

ASSET = "clean_frames"
FRAMES_NAME = "frames.json"


class ShotNotFound(LookupError):
    pass


@dataclass
class KeptFrame:
    frame_index: int
    pts: float
    path: Path
    quality: float
    is_keyframe: bool


@dataclass
class ShotResult:
    episode: str
    shot: str
    start: int
    end: int
    kept: list[KeptFrame]
    dropped_by_reason: dict[str, int]
    folder: Path

    @property
    def n_frames(self) -> int:
        return self.end - self.start


def shot_span(shots_doc: dict, episode: str, shot: str) -> tuple[int, int]:
    """(start, end) of a real shot, or ShotNotFound saying how many shots the episode has."""
    n = len(shots_doc["shots"])
    i = shot_index(shot)
    if i >= n:
        last = f" (s0000-s{n - 1:04d})" if n else ""
        raise ShotNotFound(f"episode {episode} has {n} shots{last}; shot {shot} does not exist")
    s = shots_doc["shots"][i]
    return int(s["start"]), int(s["end"])


def _decisions(index: FrameIndex, start: int, end: int) -> list[FrameDecision]:
    out = []
    for i in range(start, end):
        sh = index.shift[i]
        out.append(FrameDecision(
            candidate=bool(index.candidate[i]), reason=index.reason_of(i),
            ref=int(index.ref[i]) if index.ref[i] >= 0 else None,
            shift=None if np.isnan(sh).any() else (float(sh[0]), float(sh[1])),
            change=float(index.change[i]),
        ))
    return out


def select_clean_frames(store: MediaStore, index: FrameIndex, shots_doc: dict, transitions: set[int],
                        episode: str, shot: str) -> ShotResult:
    start, end = shot_span(shots_doc, episode, shot)
    frames = np.arange(start, end)
    in_shot = (index.cand_idx >= start) & (index.cand_idx < end)
    cand = index.cand_idx[in_shot]
    signatures = {int(f): g for f, g in zip(cand, index.cand_gray[in_shot])}
    quality = {int(f): float(q) for f, q in zip(cand, index.cand_quality[in_shot])}
    sel = select_shot_frames(
        frames, _decisions(index, start, end), signatures, quality, index.luma[start:end],
        transition_frames={f for f in transitions if start <= f < end},
    )
    keyframes = set(sel.keyframes)
    fmt = index.image_format
    src_dir = store.partition_dir(INDEX_ASSET, episode) / CANDIDATE_DIR
    staging = store.staging_dir(ASSET, episode, shot)
    try:
        rows = []
        kept: list[KeptFrame] = []
        for f in sorted(sel.kept):
            name = candidate_name(f, fmt)
            _link_or_copy(src_dir / name, staging / name)
            kept.append(KeptFrame(f, float(index.pts[f]), Path(name), quality.get(f, float("nan")), f in keyframes))
        counts: dict[str, int] = {}
        for f in range(start, end):
            if f in sel.dropped:
                reason, ref = sel.dropped[f]
                counts[reason] = counts.get(reason, 0) + 1
                rows.append({"frame": f, "pts": float(index.pts[f]), "kept": False, "reason": reason, "ref": ref})
            else:
                rows.append({"frame": f, "pts": float(index.pts[f]), "kept": True, "keyframe": f in keyframes,
                             "quality": round(quality.get(f, float("nan")), 4), "image": candidate_name(f, fmt)})
        doc = {"episode": episode, "shot": shot, "start": start, "end": end,
               "kept": len(kept), "dropped": counts, "frames": rows}
        (staging / FRAMES_NAME).write_text(json.dumps(doc, indent=1))
        folder = store.commit_dir(staging, ASSET, episode, shot)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for k in kept:
        k.path = folder / k.path
    return ShotResult(episode, shot, start, end, kept, counts, folder)


def load_shot_frames(store: MediaStore, episode: str, shot: str) -> dict:
    path = store.path(ASSET, episode, shot, FRAMES_NAME)
    if not path.exists():
        raise FileNotFoundError(f"{episode}/{shot}: no clean frames yet (materialize clean_frames first)")
    return json.loads(path.read_text())


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
