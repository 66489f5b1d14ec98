"""The episode's single decode pass: every frame's small views and drawing decisions.

This is the only place an episode is decoded in full. For each frame it keeps the
48x27 colour view (shot detection), luma statistics and the online drawing
tracker's decision; frames the tracker calls candidates (a new drawing) are
converted to full resolution and written to the staging folder of this
partition. Everything later (shots, clean frames, embeddings) reads this index
and those files instead of decoding again.

Writing runs in one background thread so JPEG encoding overlaps decoding.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from anime_assets.storage.media import MediaStore, encode_image
from anime_assets.vision import decode
from anime_assets.vision.frames import REASONS, CleanFrameParams, DrawingTracker, line_art_sharpness

ASSET = "frame_index"
INDEX_NAME = "index.npz"
CANDIDATE_DIR = "candidates"
REASON_CODES = {r: i + 1 for i, r in enumerate(REASONS)}  # 0 = candidate / no reason


def candidate_name(frame_index: int, fmt: str = "jpg") -> str:
    return f"f{frame_index:06d}.{fmt}"


@dataclass
class FrameIndex:
    """Per-frame arrays of one episode (N frames, K candidates). Saved as one .npz."""

    pts: np.ndarray  # (N,) float64 seconds
    luma: np.ndarray  # (N,) float32 mean luma of the analysis image
    small_rgb: np.ndarray  # (N, 27, 48, 3) uint8
    change: np.ndarray  # (N,) float32 tracker change score vs the previous frame
    candidate: np.ndarray  # (N,) bool
    reason: np.ndarray  # (N,) uint8, REASON_CODES or 0
    ref: np.ndarray  # (N,) int32, frame this one repeats / pans from, -1 if none
    shift: np.ndarray  # (N, 2) float32 camera shift vs ref (analysis pixels), nan if none
    cand_idx: np.ndarray  # (K,) int32 frame indices of candidates
    cand_gray: np.ndarray  # (K, H, W) uint8 analysis luma of candidates (for repeat matching)
    cand_quality: np.ndarray  # (K,) float32 line-art sharpness
    width: int
    height: int
    fps: float
    image_format: str = "jpg"
    stats: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.pts)

    def reason_of(self, i: int) -> str | None:
        code = int(self.reason[i])
        return REASONS[code - 1] if code else None

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp, pts=self.pts, luma=self.luma, small_rgb=self.small_rgb, change=self.change,
            candidate=self.candidate, reason=self.reason, ref=self.ref, shift=self.shift,
            cand_idx=self.cand_idx, cand_gray=self.cand_gray, cand_quality=self.cand_quality,
            meta=np.array([self.width, self.height], np.int32), fps=np.array(self.fps),
            image_format=np.array(self.image_format),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "FrameIndex":
        with np.load(path, allow_pickle=False) as z:
            w, h = (int(v) for v in z["meta"])
            return cls(
                pts=z["pts"], luma=z["luma"], small_rgb=z["small_rgb"], change=z["change"],
                candidate=z["candidate"], reason=z["reason"], ref=z["ref"], shift=z["shift"],
                cand_idx=z["cand_idx"], cand_gray=z["cand_gray"], cand_quality=z["cand_quality"],
                width=w, height=h, fps=float(z["fps"]), image_format=str(z["image_format"]),
            )


class _CandidateWriter:
    """Background thread: full-res conversion, sharpness, encode, write. Bounded queue keeps memory flat."""

    def __init__(self, folder: Path, fmt: str, quality: int, views: decode.FrameViews):
        self.folder, self.fmt, self.quality = folder, fmt, quality
        self.views = views
        # Sharpness is scored on the Y plane at ~640 px wide: line art is still resolved there,
        # and it costs a quarter of the half-resolution image at 1080p.
        self.luma_step = max(1, views.width // 640)
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.quality_of: dict[int, float] = {}
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, index: int, frame) -> None:
        if self.error:
            raise self.error
        self.q.put((index, frame))

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error:
                continue
            try:
                t0 = time.perf_counter()
                index, frame = item
                self.quality_of[index] = float(line_art_sharpness(self.views.luma(frame, self.luma_step)))
                bgr = decode.to_bgr(frame)
                data = encode_image(bgr, self.fmt, self.quality)
                (self.folder / candidate_name(index, self.fmt)).write_bytes(data)
                self.seconds += time.perf_counter() - t0
            except BaseException as e:  # surfaced on the decoding thread
                self.error = e

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error:
            raise self.error


def build_frame_index(
    video: Path,
    store: MediaStore,
    episode: str,
    *,
    params: CleanFrameParams | None = None,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    progress: Callable[[int, int], None] | None = None,
) -> FrameIndex:
    """Decode `video` once; write candidate frames and the index into this episode's partition folder.

    The partition folder is replaced atomically at the end, so a failure leaves the previous
    result (or nothing) in place, never a half-written folder.
    """
    info = decode.probe(video)
    views = decode.FrameViews(info.width, info.height)
    tracker = DrawingTracker(params or CleanFrameParams())
    staging = store.staging_dir(ASSET, episode)
    cand_folder = staging / CANDIDATE_DIR
    cand_folder.mkdir(parents=True, exist_ok=True)
    writer = _CandidateWriter(cand_folder, image_format, jpeg_quality, views)

    pts, luma, small, change, cand, reason, ref, shift = [], [], [], [], [], [], [], []
    cand_idx, cand_gray = [], []
    t0 = time.perf_counter()
    t_views = t_track = 0.0
    try:
        for df in decode.iter_frames(video):
            ta = time.perf_counter()
            gray, small_rgb = views.views(df.frame)
            tb = time.perf_counter()
            d = tracker.push(df.index, gray)
            tc = time.perf_counter()
            t_views += tb - ta
            t_track += tc - tb
            pts.append(df.pts)
            luma.append(float(gray.mean()))
            small.append(small_rgb)
            change.append(d.change)
            cand.append(d.candidate)
            reason.append(REASON_CODES.get(d.reason, 0) if d.reason else 0)
            ref.append(-1 if d.ref is None else d.ref)
            shift.append(d.shift if d.shift is not None else (np.nan, np.nan))
            if d.candidate:
                cand_idx.append(df.index)
                cand_gray.append(gray)
                writer.put(df.index, df.frame)
            if progress and df.index % 64 == 0:
                progress(df.index + 1, info.n_frames)
    except BaseException:
        try:
            writer.close()
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # nothing half-written survives
        raise
    writer.close()
    wall = time.perf_counter() - t0
    n = len(pts)
    if progress:
        progress(n, n)
    gshape = views.gray_size[::-1]
    index = FrameIndex(
        pts=np.asarray(pts, np.float64),
        luma=np.asarray(luma, np.float32),
        small_rgb=np.stack(small) if small else np.zeros((0, 27, 48, 3), np.uint8),
        change=np.asarray(change, np.float32),
        candidate=np.asarray(cand, bool),
        reason=np.asarray(reason, np.uint8),
        ref=np.asarray(ref, np.int32),
        shift=np.asarray(shift, np.float32).reshape(-1, 2),
        cand_idx=np.asarray(cand_idx, np.int32),
        cand_gray=np.stack(cand_gray) if cand_gray else np.zeros((0, *gshape), np.uint8),
        cand_quality=np.asarray([writer.quality_of[i] for i in cand_idx], np.float32),
        width=info.width, height=info.height, fps=info.fps, image_format=image_format,
        stats={
            "frames": n, "candidates": len(cand_idx), "seconds": wall,
            "fps": n / wall if wall else 0.0, "views_ms_per_frame": 1000 * t_views / max(n, 1),
            "tracker_ms_per_frame": 1000 * t_track / max(n, 1),
            "writer_seconds": writer.seconds,
        },
    )
    index.save(staging / INDEX_NAME)
    store.commit_dir(staging, ASSET, episode)
    return index


def index_path(store: MediaStore, episode: str) -> Path:
    return store.path(ASSET, episode, None, INDEX_NAME)


def candidate_path(store: MediaStore, episode: str, frame_index: int, fmt: str = "jpg") -> Path:
    return store.partition_dir(ASSET, episode) / CANDIDATE_DIR / candidate_name(frame_index, fmt)


def load_frame_index(store: MediaStore, episode: str) -> FrameIndex:
    path = index_path(store, episode)
    if not path.exists():
        raise FileNotFoundError(f"episode {episode}: no frame index yet (materialize frame_index first)")
    return FrameIndex.load(path)
