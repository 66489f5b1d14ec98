"""Decoding: true timestamps, the analysis views, and one-line errors for bad files."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from anime_assets.vision import decode


def _write_clip(path: Path, frames: list[np.ndarray], pts_ms: list[int] | None = None, fps: int = 24,
                container: str | None = None, faststart: bool = False) -> Path:
    h, w = frames[0].shape[:2]
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=container, options=opts) as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"crf": "18", "preset": "ultrafast"}
        if pts_ms is not None:
            st.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            if pts_ms is not None:
                vf.pts, vf.time_base = pts_ms[i], Fraction(1, 1000)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def _frames(n=12, w=160, h=96):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        f = np.full((h, w, 3), (40 + 15 * i) % 255, np.uint8)
        f[10:40, 10 + 5 * i:40 + 5 * i] = rng.integers(0, 255, 3)
        out.append(f)
    return out


def test_variable_frame_rate_timestamps_are_true(tmp_path):
    pts = [0, 40, 80, 200, 240, 600, 640, 680]
    path = _write_clip(tmp_path / "vfr.mkv", _frames(len(pts)), pts_ms=pts, container="matroska")
    got = [round(df.pts * 1000) for df in decode.iter_frames(path)]
    assert got == pts


def test_long_last_frame_is_not_truncation(tmp_path):
    """A still held 3 s at the end (one frame, one long block): the declared duration counts it, and
    so does the end check (the frame's own duration), so the file passes in full."""
    path = tmp_path / "still.mkv"
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = 160, 96, "yuv420p"
        st.codec_context.time_base = Fraction(1, 1000)
        packets = []
        for i, f in enumerate(_frames(12)):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = i * 42, Fraction(1, 1000)
            packets += st.encode(vf)
        packets += st.encode()
        last = max(packets, key=lambda p: p.pts)
        for p in packets:
            if p is last:
                p.duration = int(3 / p.time_base)
            out.mux(p)
    info = decode.probe(path)
    assert info.duration > 3.4
    assert len(list(decode.iter_frames(path))) == 12


def test_analysis_views_shapes_and_colour(tmp_path):
    frames = [np.zeros((180, 320, 3), np.uint8) for _ in range(3)]
    frames[0][:] = (255, 0, 0)
    frames[1][:] = (0, 255, 0)
    frames[2][:] = (0, 0, 255)
    a = decode.read_analysis(_write_clip(tmp_path / "rgb.mp4", frames))
    assert a.small_rgb.shape == (3, 27, 48, 3) and a.gray.shape == (3, 144, 256)
    centre = a.small_rgb[:, 13, 24].astype(int)
    for i, ch in enumerate((0, 1, 2)):  # the dominant channel survives the YUV round trip
        assert centre[i].argmax() == ch and centre[i][ch] > 200
    assert np.allclose(np.diff(a.pts), 1 / 24, atol=1e-6)


def test_bad_files_fail_with_one_line_naming_the_file(tmp_path):
    good = _write_clip(tmp_path / "good.mp4", _frames(24), faststart=True)
    data = good.read_bytes()
    cases = {}
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty.mp4"] = "empty"
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    cases["notes.mp4"] = "not a video"
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    cases["truncated.mp4"] = "truncated"
    corrupt = bytearray(data)
    mdat = corrupt.find(b"mdat")
    rng = np.random.default_rng(1)
    corrupt[mdat + 8:] = rng.integers(0, 255, len(corrupt) - mdat - 8, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(corrupt))
    cases["corrupt.mp4"] = ""
    with av.open(str(tmp_path / "audio.m4a"), "w") as out:
        st = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in st.encode(frame):
            out.mux(p)
        for p in st.encode():
            out.mux(p)
    cases["audio.m4a"] = "no video stream"
    for name, expect in cases.items():
        with pytest.raises(decode.VideoError) as e:
            decode.probe(tmp_path / name)
            list(decode.iter_frames(tmp_path / name))  # broken data past the first frame
        msg = str(e.value)
        assert msg.startswith(f"{name}: ") and "\n" not in msg and expect in msg, msg
