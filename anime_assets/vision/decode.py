"""Decoding: one pass over an episode, cheap per-frame views, exact timestamps.

The episode is decoded once. Each frame yields two small views that everything
downstream of decoding works on:

* `gray`: luma at analysis resolution (~256 px wide), taken straight from the Y
  plane by striding plus an area resize - no colour conversion of the full frame;
* `small_rgb`: 48x27 RGB, the input size TransNetV2 was trained on.

Only frames that are kept are converted to full-resolution RGB (see `to_bgr`).
Timestamps come from each frame's pts and the stream time base, so variable
frame rate files get true times, not index / fps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

ANALYSIS_WIDTH = 256
SMALL_SIZE = (48, 27)  # (width, height) of TransNetV2's input

# Planar 8-bit YUV formats whose planes we can read directly: name -> (chroma x, y subsampling)
_PLANAR_8BIT = {
    "yuv420p": (2, 2), "yuvj420p": (2, 2),
    "yuv422p": (2, 1), "yuvj422p": (2, 1),
    "yuv444p": (1, 1), "yuvj444p": (1, 1),
}


class VideoError(Exception):
    """A file that cannot be used as an episode. str() is one line: '<file>: <reason>'."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{Path(path).name}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float  # average frame rate (nominal for VFR files; use pts for times)
    n_frames: int  # container's count or an estimate from duration
    duration: float
    codec: str
    pix_fmt: str
    size_bytes: int


@dataclass
class AnalysisFrames:
    """The small views of every frame of a clip (what `read_analysis` returns)."""

    pts: np.ndarray  # (N,) float64 seconds
    small_rgb: np.ndarray  # (N, 27, 48, 3) uint8
    gray: np.ndarray  # (N, H, W) uint8 analysis luma
    fps: float
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.pts)


def analysis_size(width: int, height: int, target_width: int = ANALYSIS_WIDTH) -> tuple[int, int]:
    """(w, h) of the analysis image: `target_width` wide, the frame's aspect, even height."""
    h = max(2, int(round(height * target_width / width / 2)) * 2)
    return target_width, h


def _open(path: str | os.PathLike):
    p = Path(path)
    if not p.exists():
        raise VideoError(p, "file not found")
    if not p.is_file():
        raise VideoError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise VideoError(p, "file is empty (0 bytes)")
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except av.error.InvalidDataError:
        raise VideoError(p, "not a video file (no known container format)") from None
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(p, f"cannot open: {_ffmpeg_reason(e)}") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoError(p, f"no video stream (contains: {', '.join(kinds)})")
    return container


def _ffmpeg_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return " ".join(str(msg).split())[:160]


def probe(path: str | os.PathLike) -> VideoInfo:
    """Check that `path` is a decodable video and describe it; raises VideoError otherwise.

    Decodes the first frame so that a file with a valid header but broken data fails here,
    before anything is written.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 24.0
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        n = int(stream.frames or round(duration * fps))
        try:
            first = next(container.decode(stream), None)
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoError(path, f"video stream cannot be decoded: {_ffmpeg_reason(e)}") from None
        if first is None:
            raise VideoError(path, "video stream has no decodable frames")
        _check_tail(container, stream, duration, path)
        return VideoInfo(
            path=str(path), width=first.width, height=first.height, fps=fps, n_frames=n,
            duration=duration, codec=ctx.name, pix_fmt=first.format.name,
            size_bytes=Path(path).stat().st_size,
        )
    finally:
        container.close()


def _check_tail(container, stream, duration: float, path) -> None:
    """Seek near the end and decode one frame: a truncated file fails here, before any work."""
    if duration <= 0 or stream.time_base is None:
        return
    target = int((stream.start_time or 0) + 0.9 * duration / stream.time_base)
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
        frame = next(container.decode(stream), None)
    except (av.error.FFmpegError, ValueError, StopIteration):
        frame = None
    if frame is None:
        raise VideoError(path, f"truncated or corrupt: no frame decodes near the end ({duration:.1f} s declared)")


@dataclass
class DecodedFrame:
    index: int
    pts: float  # seconds
    frame: av.VideoFrame


def iter_frames(path: str | os.PathLike, *, threads: bool = True) -> Iterator[DecodedFrame]:
    """Decode every frame in presentation order with true timestamps.

    Corrupt data part-way through raises VideoError naming the frame where decoding stopped.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        if threads:
            stream.thread_type = "AUTO"  # frame + slice threads, as ffmpeg itself decodes
            # Two frames more in flight than cores: the decoder keeps working while this thread
            # analyses the previous frame (measured ~8% faster on 2 cores than the default).
            stream.codec_context.thread_count = (os.cpu_count() or 2) + 2
        tb = stream.time_base
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 24.0
        start = stream.start_time or 0
        index = 0
        last_pts = -1.0
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and tb is not None:
                    pts = float((frame.pts - start) * tb)
                else:
                    pts = index / fps
                if pts <= last_pts:  # broken or missing pts: keep times strictly increasing
                    pts = last_pts + 1.0 / fps
                last_pts = pts
                yield DecodedFrame(index, pts, frame)
                index += 1
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoError(path, f"decoding failed after frame {index}: {_ffmpeg_reason(e)}") from None
        if index == 0:
            raise VideoError(path, "video stream has no decodable frames")
        declared = stream.frames or 0
        if declared > 10 and index < 0.9 * declared:
            raise VideoError(path, f"truncated: decoded {index} of {declared} frames")
    finally:
        container.close()


def _plane(frame: av.VideoFrame, i: int, width: int, height: int) -> np.ndarray:
    plane = frame.planes[i]
    buf = np.frombuffer(plane, np.uint8)
    return buf.reshape(-1, plane.line_size)[:height, :width]


class FrameViews:
    """Turns decoded frames into the analysis views cheaply (Y plane striding, tiny colour convert)."""

    def __init__(self, width: int, height: int, analysis_width: int = ANALYSIS_WIDTH):
        self.width, self.height = width, height
        self.gray_size = analysis_size(width, height, analysis_width)
        # Stride so that the area resize starts from at most ~2x the target: cheap and alias-free enough.
        self.step = max(1, width // (2 * analysis_width))
        self.bt709 = height >= 720  # the usual default when a file does not tag its colour matrix

    def views(self, frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray]:
        """(gray analysis image, 48x27 RGB) for one frame."""
        fmt = frame.format.name
        if fmt not in _PLANAR_8BIT or frame.width != self.width or frame.height != self.height:
            frame = frame.reformat(width=self.width, height=self.height, format="yuv420p")
            fmt = "yuv420p"
        sx, sy = _PLANAR_8BIT[fmt]
        w, h = self.width, self.height
        y = _plane(frame, 0, w, h)
        s = self.step
        # A contiguous strided copy first: cv2 would copy a strided view anyway, more slowly.
        gray = cv2.resize(np.ascontiguousarray(y[::s, ::s]), self.gray_size, interpolation=cv2.INTER_AREA)
        cw, ch = -(-w // sx), -(-h // sy)
        cs = max(1, cw // (2 * SMALL_SIZE[0]))  # chroma only needs ~2x the 48x27 target
        us = cv2.resize(np.ascontiguousarray(_plane(frame, 1, cw, ch)[::cs, ::cs]), SMALL_SIZE, interpolation=cv2.INTER_AREA)
        vs = cv2.resize(np.ascontiguousarray(_plane(frame, 2, cw, ch)[::cs, ::cs]), SMALL_SIZE, interpolation=cv2.INTER_AREA)
        ys = cv2.resize(gray, SMALL_SIZE, interpolation=cv2.INTER_AREA)
        space, rng = getattr(frame, "colorspace", 2), getattr(frame, "color_range", 0)
        bt709 = space == 1 or (space not in (5, 6) and self.bt709)  # tags first (1: BT.709, 5/6: BT.601)
        full = rng == 2 or (rng == 0 and fmt.startswith("yuvj"))
        return gray, yuv_to_rgb(ys, us, vs, bt709=bt709, full_range=full)

    def luma(self, frame: av.VideoFrame, step: int) -> np.ndarray:
        """The Y plane subsampled by `step` (contiguous): a cheap grey image for per-candidate scores."""
        if frame.format.name not in _PLANAR_8BIT:
            frame = frame.reformat(format="yuv420p")
        return np.ascontiguousarray(_plane(frame, 0, frame.width, frame.height)[::step, ::step])


def _yuv_matrix(bt709: bool, full_range: bool) -> np.ndarray:
    """3x4 affine matrix from (Y, U, V) bytes to (R, G, B)."""
    if bt709:
        kr, kb = 0.2126, 0.0722
    else:
        kr, kb = 0.299, 0.114
    kg = 1.0 - kr - kb
    ys, cs = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    yo = 0.0 if full_range else 16.0
    rv = 2 * (1 - kr) * cs
    bu = 2 * (1 - kb) * cs
    gu = -2 * kb * (1 - kb) / kg * cs
    gv = -2 * kr * (1 - kr) / kg * cs
    m = np.array([[ys, 0.0, rv], [ys, gu, gv], [ys, bu, 0.0]], np.float64)
    offset = -m @ np.array([yo, 128.0, 128.0])
    return np.hstack([m, offset[:, None]]).astype(np.float32)


_MATRICES = {(a, b): _yuv_matrix(a, b) for a in (False, True) for b in (False, True)}


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, *, bt709: bool, full_range: bool) -> np.ndarray:
    """Small YUV planes (same size) -> RGB uint8, with the matrix and range of the source."""
    yuv = cv2.merge([y, u, v]).astype(np.float32)
    rgb = cv2.transform(yuv, _MATRICES[(bt709, full_range)])
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """Full-resolution BGR (what cv2 writes). Only called for frames that are kept."""
    return frame.to_ndarray(format="bgr24")


def read_analysis(path: str | os.PathLike, *, analysis_width: int = ANALYSIS_WIDTH,
                  max_frames: int | None = None) -> AnalysisFrames:
    """Decode a (short) clip into its analysis views. For whole episodes the pipeline streams instead."""
    info = probe(path)
    views = FrameViews(info.width, info.height, analysis_width)
    pts, small, gray = [], [], []
    for df in iter_frames(path):
        if max_frames is not None and df.index >= max_frames:
            break
        g, s = views.views(df.frame)
        pts.append(df.pts)
        gray.append(g)
        small.append(s)
    return AnalysisFrames(
        pts=np.asarray(pts, np.float64), small_rgb=np.stack(small), gray=np.stack(gray),
        fps=info.fps, width=info.width, height=info.height,
    )


def read_frames_bgr(path: str | os.PathLike, indices) -> dict[int, np.ndarray]:
    """Full-resolution BGR of the given frame indices (one sequential decode, stops after the last)."""
    wanted = set(int(i) for i in indices)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    for df in iter_frames(path):
        if df.index in wanted:
            out[df.index] = to_bgr(df.frame)
        if df.index >= last:
            break
    return out


def read_frames_rgb(path: str | os.PathLike, indices, pts: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Full-resolution RGB of the given frame indices, seeking close to the first one.

    ``pts``: every frame's timestamp (seconds) from the frame index, which maps decoded
    frames back to indices after a seek; without it the file is decoded from the start.
    Used by per-shot work that needs full-resolution pixels of a frame range (layers).
    """
    wanted = sorted(set(int(i) for i in indices))
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    if pts is None or wanted[0] == 0:
        for df in iter_frames(path):
            if df.index in wanted:
                out[df.index] = df.frame.to_ndarray(format="rgb24")
            if df.index >= wanted[-1]:
                break
        return out
    pts = np.asarray(pts, np.float64)
    half = 0.5 * float(np.median(np.diff(pts))) if len(pts) > 1 else 0.02
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = (os.cpu_count() or 2) + 2
        tb = stream.time_base
        start = stream.start_time or 0
        target = float(pts[wanted[0]]) - 2 * half
        container.seek(int(start + max(0.0, target) / tb), stream=stream, backward=True, any_frame=False)
        want = set(wanted)
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float((frame.pts - start) * tb)
                i = int(np.searchsorted(pts, t - half))
                if i >= len(pts) or abs(pts[i] - t) > half:
                    continue
                if i in want:
                    out[i] = frame.to_ndarray(format="rgb24")
                if i >= wanted[-1]:
                    break
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoError(path, f"decoding failed near frame {wanted[0]}: {_ffmpeg_reason(e)}") from None
    finally:
        container.close()
    missing = [i for i in wanted if i not in out]
    if missing:  # the seek landed after a wanted frame (odd GOP): decode from the start instead
        out.update(read_frames_rgb(path, missing, None))
    return out
