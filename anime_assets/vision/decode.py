"""Decoding: one pass over an episode, cheap per-frame views, exact timestamps.

The episode is decoded once. Each frame yields two small views that everything
downstream of decoding works on:

* `gray`: luma at analysis resolution (~256 px wide), taken straight from the Y
  plane by striding plus an area resize - no colour conversion of the full frame;
* `small_rgb`: 48x27 RGB, the input size TransNetV2 was trained on.

Only frames that are kept are converted to full-resolution RGB (see `to_bgr`).
Timestamps come from each frame's pts and the stream time base, so variable
frame rate files get true times, not index / fps.

Nothing is trusted to the container alone: `probe` reads the end of the stream and
`iter_frames` checks where the decoded frames end, so a cut-off file is refused in one
line (`VideoError`) instead of becoming a short episode. Frames with a display matrix
(phone clips, `ffmpeg -display_rotation`) come out upright from every function here.
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


# What ffmpeg / PyAV raise on bad data, seeks a demuxer refuses, and reads that fail: each becomes a
# one-line VideoError. (av.error.FFmpegError covers PyAV's OSError / EOFError / PermissionError kinds.)
_AV_ERRORS = (av.error.FFmpegError, ValueError, OSError, EOFError)


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
    rotation: int = 0  # degrees counter-clockwise, from the display matrix; applied to every frame handed out
    rotation_tag: int = 0  # a bare 'rotate' tag without a display matrix: NOT applied (ffmpeg ignores it too)


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
    except av.error.InvalidDataError as e:
        kind = _container_magic(p)
        if kind:  # e.g. an MP4 cut before its index ('moov atom not found')
            raise VideoError(p, f"cannot open: damaged or truncated {kind} ({_ffmpeg_reason(e)})") from None
        raise VideoError(p, "not a video file (no known container format)") from None
    except _AV_ERRORS as e:
        raise VideoError(p, f"cannot open: {_ffmpeg_reason(e)}") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoError(p, f"no video stream (contains: {', '.join(kinds)})")
    if container.streams.video[0].codec_context is None:
        container.close()
        raise VideoError(p, "no decoder for this file's video codec")
    return container


def _container_magic(p: Path) -> str | None:
    """The container a file's first bytes announce, so a damaged one is not called 'not a video'."""
    try:
        with open(p, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        return "MP4/MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    return None


def _ffmpeg_reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return " ".join(str(msg).split())[:160]


def _fps(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or 0) or 24.0


def _declared_duration(container, stream) -> tuple[float, bool]:
    """(seconds the video should last from its first frame, whether that figure is the video's own).

    The video's own duration (MP4/MOV/AVI headers; Matroska's per-track DURATION tag, which the
    muxer reserves up front, so it survives a cut) comes first; the container's is the longest
    stream's (audio, subtitles) and gets more slack (`_tolerance`). 0 when the file declares none.
    """
    tb = stream.time_base
    if stream.duration and tb is not None:
        return float(stream.duration * tb), True
    for key, value in stream.metadata.items():
        if key.upper().startswith("DURATION"):
            seconds = _hms(value)
            if seconds:
                return seconds, True
    if container.duration and container.duration > 0:
        start = float(stream.start_time * tb) if stream.start_time is not None and tb is not None else 0.0
        end = ((container.start_time or 0) + container.duration) / av.time_base
        return max(0.0, end - start), False
    return 0.0, False


def _hms(value: str) -> float:
    """'00:23:40.125000000' -> seconds (0.0 if it does not parse)."""
    try:
        h, m, sec = str(value).strip().split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return 0.0


def _tolerance(declared: float, own: bool) -> float:
    """How far the real end may fall short of the declared duration before the file counts as cut.

    A video's own duration and its last frame agree to a frame or two (edit lists, VFR, B-frames);
    a container's duration is compared with the end of every stream's data, with a little more slack
    for muxers that round it. Both margins are far below a lost tail worth noticing.
    """
    return max(0.5, 0.002 * declared) if own else max(1.0, 0.005 * declared)


def _short_reason(end: float, declared: float) -> str:
    return f"truncated: decodes to {end:.1f} s of {declared:.1f} s declared"


def _rotation_tag(stream) -> int:
    """Degrees of a bare 'rotate' tag (old muxers, Matroska tags), 0 if none or unreadable."""
    for key, value in stream.metadata.items():
        if key.lower() == "rotate":
            try:
                return int(round(float(value))) % 360
            except ValueError:
                return 0
    return 0


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that make `frame` upright: its display matrix, read per frame
    (FFmpeg attaches the stream's matrix to every decoded frame; a C loop over side data, ~free)."""
    return round(frame.rotation / 90) % 4


def _upright(img: np.ndarray, turns: int) -> np.ndarray:
    """`img` turned counter-clockwise by `turns` quarter turns, contiguous (cv2 needs it); as is for 0."""
    return np.ascontiguousarray(np.rot90(img, turns)) if turns else img


def probe(path: str | os.PathLike) -> VideoInfo:
    """Check that `path` is a decodable video and describe it; raises VideoError otherwise.

    Decodes the first frame and reads the end of the stream, so that a file with a valid header but
    broken or missing data fails here, before anything is written. Width and height are upright.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # the tail check decodes up to a GOP
        ctx = stream.codec_context
        fps = _fps(stream)
        duration, own = _declared_duration(container, stream)
        n = int(stream.frames or round(duration * fps))
        try:
            first = next(container.decode(stream), None)
        except _AV_ERRORS as e:
            raise VideoError(path, f"video stream cannot be decoded: {_ffmpeg_reason(e)}") from None
        if first is None:
            raise VideoError(path, "video stream has no decodable frames")
        if duration > 0 and stream.time_base is not None:
            _check_tail(container, stream, duration, own, path)
        turns = _quarter_turns(first)
        w, h = (first.height, first.width) if turns % 2 else (first.width, first.height)
        return VideoInfo(
            path=str(path), width=w, height=h, fps=fps, n_frames=n,
            duration=duration, codec=ctx.name, pix_fmt=first.format.name,
            size_bytes=Path(path).stat().st_size, rotation=90 * turns,
            rotation_tag=0 if turns else _rotation_tag(stream),
        )
    except VideoError:
        raise
    except _AV_ERRORS as e:  # anything else ffmpeg says, in one line
        raise VideoError(path, f"cannot read: {_ffmpeg_reason(e)}") from None
    finally:
        container.close()


# The tail check seeks this far before the declared end; if nothing at all is read from there (an
# index that points past the end of a cut file), it retries from these fractions of the duration.
_TAIL_SECONDS = 1.0
_TAIL_RETRIES = (0.75, 0.5, 0.25, 0.0)
# At most this many frames are decoded after the seek; past them (a keyframe far back) packet times
# stand in, so a file with rare keyframes costs a demux, not a second decode. iter_frames decodes all.
_TAIL_MAX_FRAMES = 300


def _check_tail(container, stream, declared: float, own: bool, path) -> None:
    """Find where the stream really ends and refuse a file that stops short of its declared duration."""
    for target in (declared - _TAIL_SECONDS, *(f * declared for f in _TAIL_RETRIES)):
        # A container's duration is its longest stream's: then every stream's data must reach it.
        end, error = _read_to_end(container, stream, max(0.0, target), every_stream=not own)
        if end is not None or error == "seek":
            break
    if error == "seek" or end is None:  # seeking is refused or broken (the first frame did decode):
        return  # the full pass in iter_frames checks the end instead
    if end < declared - _tolerance(declared, own):
        raise VideoError(path, _short_reason(end, declared))
    if error:  # the data is all there but the last of it does not decode
        raise VideoError(path, f"damaged near the end ({declared:.1f} s): {error}")


def _read_to_end(container, stream, target: float, every_stream: bool) -> tuple[float | None, str | None]:
    """Seek to the keyframe before `target` (s from the stream's start) and read to the end of the file.

    Returns (end of the last frame or packet read, in s from the video's start, None if nothing was
    read; the decoder's complaint if decoding failed on the way, "seek" if the seek was refused).
    Packets count as well as frames: some demuxers (MPEG-TS) land on a non-keyframe, and the decoder
    then outputs nothing until the next keyframe, yet the data is there.
    """
    tb, start = stream.time_base, stream.start_time or 0
    try:
        container.seek(start + int(target / tb), stream=stream, backward=True, any_frame=False)
    except _AV_ERRORS:
        return None, "seek"
    end, budget, error = None, _TAIL_MAX_FRAMES, None
    try:
        for packet in container.demux(*(() if every_stream else (stream,))):
            end = _later(end, packet.pts, packet.duration, packet.time_base)
            if budget > 0 and packet.stream_index == stream.index:
                for frame in packet.decode():
                    budget -= 1
                    end = _later(end, frame.pts, frame.duration, tb)
    except _AV_ERRORS as e:
        error = _ffmpeg_reason(e)
    return (None if end is None else end - float(start * tb)), error


def _later(end: float | None, pts, duration, time_base) -> float | None:
    """max(end, where a packet / frame stops, in s); `end` if it has no time."""
    if pts is None or time_base is None:
        return end
    stop = float((pts + (duration or 0)) * time_base)
    return stop if end is None else max(end, stop)


@dataclass
class DecodedFrame:
    index: int
    pts: float  # seconds
    frame: av.VideoFrame  # as decoded (coded orientation): pass it to FrameViews / to_bgr for upright pixels


def iter_frames(path: str | os.PathLike, *, threads: bool = True) -> Iterator[DecodedFrame]:
    """Decode every frame in presentation order with true timestamps.

    Corrupt data part-way through raises VideoError naming the frame where decoding stopped; a stream
    whose frames end before its declared duration (a cut file) raises VideoError after the last frame.
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
        fps = _fps(stream)
        start = stream.start_time or 0
        declared, own = _declared_duration(container, stream)
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
        except _AV_ERRORS as e:
            end = last_pts + 1.0 / fps
            if index and own and end < declared - _tolerance(declared, own):  # a cut file
                raise VideoError(path, f"{_short_reason(end, declared)} ({_ffmpeg_reason(e)})") from None
            raise VideoError(path, f"decoding failed after frame {index}: {_ffmpeg_reason(e)}") from None
        if index == 0:
            raise VideoError(path, "video stream has no decodable frames")
        # The last frame lasts its own duration (a VFR still can be long), else one nominal frame.
        end = last_pts + (float(frame.duration * tb) if frame.duration and tb is not None else 1.0 / fps)
        # Only the video's own duration is compared here; a container's (the longest stream's) is
        # checked by probe against every stream's data.
        if own and end < declared - _tolerance(declared, own):
            raise VideoError(path, _short_reason(end, declared))
    finally:
        container.close()


def _plane(frame: av.VideoFrame, i: int, width: int, height: int) -> np.ndarray:
    plane = frame.planes[i]
    buf = np.frombuffer(plane, np.uint8)
    return buf.reshape(-1, plane.line_size)[:height, :width]


class FrameViews:
    """Turns decoded frames into the analysis views cheaply (Y plane striding, tiny colour convert).

    `width`, `height`: the upright frame size, as `VideoInfo` gives it. A frame with a display matrix
    is worked on as coded and only its small views are turned, so rotation costs next to nothing.
    """

    def __init__(self, width: int, height: int, analysis_width: int = ANALYSIS_WIDTH):
        self.width, self.height = width, height
        self.gray_size = analysis_size(width, height, analysis_width)
        gw, gh = self.gray_size
        # Per orientation of the coded frame (0: as shown, 1: a quarter turn away): coded size, gray and
        # small sizes before the turn, the stride so that the area resize starts from at most ~2x the
        # target (cheap and alias-free enough), and BT.709 as the usual default when a file does not
        # tag its colour matrix (coded height >= 720).
        self._coded = (
            (width, height, (gw, gh), SMALL_SIZE, max(1, width // (2 * gw)), height >= 720),
            (height, width, (gh, gw), SMALL_SIZE[::-1], max(1, height // (2 * gh)), width >= 720),
        )
        self.step, self.bt709 = self._coded[0][4], self._coded[0][5]

    def views(self, frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray]:
        """(gray analysis image, 48x27 RGB) for one frame, upright."""
        turns = _quarter_turns(frame)
        w, h, gray_size, small_size, s, default_709 = self._coded[turns % 2]
        fmt = frame.format.name
        if fmt not in _PLANAR_8BIT or frame.width != w or frame.height != h:
            frame = frame.reformat(width=w, height=h, format="yuv420p")
            fmt = "yuv420p"
        sx, sy = _PLANAR_8BIT[fmt]
        y = _plane(frame, 0, w, h)
        # A contiguous strided copy first: cv2 would copy a strided view anyway, more slowly.
        gray = cv2.resize(np.ascontiguousarray(y[::s, ::s]), gray_size, interpolation=cv2.INTER_AREA)
        cw, ch = -(-w // sx), -(-h // sy)
        cs = max(1, cw // (2 * small_size[0]))  # chroma only needs ~2x the 48x27 target
        us = cv2.resize(np.ascontiguousarray(_plane(frame, 1, cw, ch)[::cs, ::cs]), small_size, interpolation=cv2.INTER_AREA)
        vs = cv2.resize(np.ascontiguousarray(_plane(frame, 2, cw, ch)[::cs, ::cs]), small_size, interpolation=cv2.INTER_AREA)
        ys = cv2.resize(gray, small_size, interpolation=cv2.INTER_AREA)
        space, rng = getattr(frame, "colorspace", 2), getattr(frame, "color_range", 0)
        bt709 = space == 1 or (space not in (5, 6) and default_709)  # tags first (1: BT.709, 5/6: BT.601)
        full = rng == 2 or (rng == 0 and fmt.startswith("yuvj"))
        small = yuv_to_rgb(ys, us, vs, bt709=bt709, full_range=full)
        return _upright(gray, turns), _upright(small, turns)

    def luma(self, frame: av.VideoFrame, step: int) -> np.ndarray:
        """The Y plane subsampled by `step` (contiguous, upright): a cheap grey image for per-candidate scores."""
        turns = _quarter_turns(frame)
        if frame.format.name not in _PLANAR_8BIT:
            frame = frame.reformat(format="yuv420p")
        y = np.ascontiguousarray(_plane(frame, 0, frame.width, frame.height)[::step, ::step])
        return _upright(y, turns)


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
    """Full-resolution BGR (what cv2 writes), upright. Only called for frames that are kept."""
    return _upright(frame.to_ndarray(format="bgr24"), _quarter_turns(frame))


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """Full-resolution RGB, upright."""
    return _upright(frame.to_ndarray(format="rgb24"), _quarter_turns(frame))


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
    """Full-resolution RGB (upright) of the given frame indices, seeking close to the first one.

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
                out[df.index] = to_rgb(df.frame)
            if df.index >= wanted[-1]:
                break
        return out
    out = _read_near(path, wanted, np.asarray(pts, np.float64))
    missing = [i for i in wanted if i not in out]
    if missing:  # the seek landed after a wanted frame (odd GOP) or was refused: decode from the start
        out.update(read_frames_rgb(path, missing, None))
    return out


def _read_near(path, wanted: list[int], pts: np.ndarray) -> dict[int, np.ndarray]:
    """The wanted frames that decode after a seek to just before the first; {} if the demuxer cannot seek."""
    half = 0.5 * float(np.median(np.diff(pts))) if len(pts) > 1 else 0.02
    out: dict[int, np.ndarray] = {}
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = (os.cpu_count() or 2) + 2
        tb = stream.time_base
        start = stream.start_time or 0
        target = float(pts[wanted[0]]) - 2 * half
        try:
            container.seek(int(start + max(0.0, target) / tb), stream=stream, backward=True, any_frame=False)
        except _AV_ERRORS:
            return out
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
                    out[i] = to_rgb(frame)
                if i >= wanted[-1]:
                    break
        except _AV_ERRORS as e:
            raise VideoError(path, f"decoding failed near frame {wanted[0]}: {_ffmpeg_reason(e)}") from None
    finally:
        container.close()
    return out
