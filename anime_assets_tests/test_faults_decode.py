"""Decoding faults (issue 10): truncated files are refused in one line, rotated files come out upright.

All media is made at test time in tmp dirs from the real 10 s clip `tupi_example.mp4` (2D animation,
320x234, 18 fps, 180 frames) with the ffmpeg binary that imageio-ffmpeg ships: stream copies
(remux, byte truncation, rotation metadata) keep the very same H.264 bitstream, so the decoded
pixels of a remux equal the original's exactly.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from anime_assets.vision import decode

pytestmark = pytest.mark.faults

REAL = Path(__file__).parent / "fixtures" / "media" / "real" / "tupi_example.mp4"
W, H, N_FRAMES = 320, 234, 180


def _ffmpeg(*args: str) -> None:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-y", *args]
    subprocess.run(cmd, check=True, capture_output=True)


def _ffmpeg_rgb(path: Path, w: int, h: int) -> np.ndarray:
    """First frame as ffmpeg itself shows it (the CLI applies the display matrix): an outside reference."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-frames:v", "1",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(out, np.uint8).reshape(h, w, 3)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("faults_media")
    m = {
        "mkv": d / "clip.mkv",
        "mp4": d / "clip.mp4",  # moov at the end: a cut file has no index at all
        "faststart.mp4": d / "clip_fs.mp4",  # moov first: the index promises frames the file lacks
        "webm": d / "clip.webm",
    }
    _ffmpeg("-i", str(REAL), "-c", "copy", str(m["mkv"]))
    _ffmpeg("-i", str(REAL), "-c", "copy", str(m["mp4"]))
    _ffmpeg("-i", str(REAL), "-c", "copy", "-movflags", "faststart", str(m["faststart.mp4"]))
    _ffmpeg("-i", str(REAL), "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "150k",
            str(m["webm"]))
    for deg in (90, 180, 270):
        m[f"rot{deg}.mp4"] = d / f"rot{deg}.mp4"
        _ffmpeg("-display_rotation", str(deg), "-i", str(REAL), "-c", "copy", str(m[f"rot{deg}.mp4"]))
    m["rot90.mkv"] = d / "rot90.mkv"
    _ffmpeg("-display_rotation", "90", "-i", str(REAL), "-c", "copy", str(m["rot90.mkv"]))
    m["tag90.mkv"] = d / "tag90.mkv"  # a bare 'rotate' tag, no display matrix
    _ffmpeg("-i", str(REAL), "-c", "copy", "-metadata:s:v", "rotate=90", str(m["tag90.mkv"]))
    return m


def _one_line_naming(e: pytest.ExceptionInfo, name: str) -> str:
    msg = str(e.value)
    assert msg.startswith(f"{name}: ") and "\n" not in msg and len(msg) < 300, msg
    return msg


# ----------------------------------------------------------------------------- truncation

CONTAINERS = ["mkv", "mp4", "faststart.mp4", "webm"]


@pytest.mark.parametrize("kind", CONTAINERS)
def test_whole_files_pass(media, kind):
    info = decode.probe(media[kind])
    assert (info.width, info.height) == (W, H) and abs(info.duration - 10.0) < 0.1
    frames = list(decode.iter_frames(media[kind]))
    assert len(frames) == N_FRAMES
    assert abs(frames[-1].pts - (N_FRAMES - 1) / 18) < 1e-3


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("kind", CONTAINERS)
def test_truncated_files_are_refused_in_one_line(media, kind, frac, tmp_path):
    data = media[kind].read_bytes()
    name = f"ep01_{int(frac * 100)}.{kind.split('.')[-1]}"
    cut = tmp_path / name
    cut.write_bytes(data[: int(len(data) * frac)])

    with pytest.raises(decode.VideoError) as e:
        decode.probe(cut)
    msg = _one_line_naming(e, name)
    if frac >= 0.5 and kind != "mp4":  # the container opens, so the diagnosis is the missing end
        assert "truncated" in msg, msg

    with pytest.raises(decode.VideoError) as e:  # the full pass refuses it too, whatever the probe said
        for _ in decode.iter_frames(cut):
            pass
    _one_line_naming(e, name)

    pts = np.arange(N_FRAMES) / 18.0  # the whole file's frame times: wanted frames lie past the cut
    with pytest.raises(decode.VideoError) as e:
        decode.read_frames_rgb(cut, [N_FRAMES - 20, N_FRAMES - 1], pts)
    _one_line_naming(e, name)
    with pytest.raises(decode.VideoError) as e:
        decode.read_frames_bgr(cut, [N_FRAMES - 1])
    _one_line_naming(e, name)


def test_cut_before_any_frame_fails_in_one_line_on_every_path(media, tmp_path):
    """2% of an MKV: the header and no frame. The seek in read_frames_rgb used to leak a PermissionError."""
    data = media["mkv"].read_bytes()
    cut = tmp_path / "ep02.mkv"
    cut.write_bytes(data[: len(data) // 50])
    for call in (lambda: decode.probe(cut), lambda: list(decode.iter_frames(cut)),
                 lambda: decode.read_frames_rgb(cut, [5, 100], np.arange(N_FRAMES) / 18.0)):
        with pytest.raises(decode.VideoError) as e:
            call()
        _one_line_naming(e, "ep02.mkv")


def _good_files(d: Path) -> dict[str, Path]:
    """Two seconds of the real clip in the codecs, containers and oddities episodes come in."""
    src, two_s = ["-i", str(REAL)], ["-frames:v", "36"]
    specs = {
        "h264_bframes.mkv": ["-c:v", "libx264", "-preset", "veryfast", "-bf", "3"],
        "hevc_10bit.mp4": ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
                           "-x265-params", "log-level=none"],
        "vp9.webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"],
        "av1.mkv": ["-c:v", "libsvtav1", "-preset", "12"],
        "gray.mkv": ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "gray"],
        "odd_size.mp4": ["-vf", "scale=161:97", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"],
        "prores.mov": ["-c:v", "prores_ks", "-profile:v", "0"],
        "mpeg4.avi": ["-c:v", "mpeg4", "-q:v", "5"],
        "vfr.mkv": ["-vf", "setpts='if(lt(N,12),N*2,N+12)/18/TB'", "-fps_mode", "vfr", "-c:v", "libx264",
                    "-preset", "ultrafast"],
        # The container's duration is the audio's, 0.8 s past the video's end.
        "audio_longer.mkv": ["-f", "lavfi", "-t", "2.8", "-i", "anullsrc=r=16000:cl=mono", "-map", "0:v",
                             "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
        "h264.ts": ["-c:v", "libx264", "-preset", "ultrafast"],
    }
    out = {}
    for name, args in specs.items():
        out[name] = d / name
        _ffmpeg(*src, *args, *two_s, str(out[name]))
    # A stream copy cut between keyframes: an edit list hides the frames before the cut point,
    # so the declared duration and the decoded frames disagree a little.
    out["copy_cut_editlist.mp4"] = d / "copy_cut_editlist.mp4"
    _ffmpeg("-ss", "1.3", "-i", str(REAL), "-t", "3", "-c", "copy", str(out["copy_cut_editlist.mp4"]))
    # Written to a pipe: no duration, no cues, no frame count anywhere.
    nodur = d / "no_duration.mkv"
    with open(nodur, "wb") as f:
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", *src, "-c", "copy", *two_s,
                        "-f", "matroska", "-"], check=True, stdout=f)
    out["no_duration.mkv"] = nodur
    return out


def _check_good(path: Path) -> None:
    info = decode.probe(path)
    frames = list(decode.iter_frames(path))
    assert len(frames) > 10
    if info.duration:  # the last frame lies where the file says the stream ends
        assert abs(frames[-1].pts - info.duration) < 1.0, (frames[-1].pts, info.duration)
    views = decode.FrameViews(info.width, info.height)
    gray, small = views.views(frames[-1].frame)
    assert gray.shape == decode.analysis_size(info.width, info.height)[::-1] and small.shape == (27, 48, 3)


def test_good_files_of_every_kind_pass(tmp_path):
    refused = {}
    for name, path in _good_files(tmp_path).items():
        try:
            _check_good(path)
        except (decode.VideoError, AssertionError) as e:
            refused[name] = str(e)
    assert not refused, refused


def test_matroska_without_track_durations(tmp_path):
    """Only the container's duration (here the audio's, 2.5 s past the video) is declared, as in
    files whose muxer writes no per-track DURATION tag (the tag names are blanked byte for byte):
    the whole file passes, a cut one is still refused."""
    src = tmp_path / "src.mkv"
    _ffmpeg("-i", str(REAL), "-f", "lavfi", "-t", "12.5", "-i", "anullsrc=r=16000:cl=mono", "-map", "0:v",
            "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(src))
    data = src.read_bytes().replace(b"DURATION", b"XURATION")
    whole, cut = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    whole.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2])
    info = decode.probe(whole)
    assert info.duration > 12.0  # nothing but the container's figure to go on
    assert sum(1 for _ in decode.iter_frames(whole)) == N_FRAMES
    with pytest.raises(decode.VideoError) as e:
        decode.probe(cut)
    assert "truncated" in _one_line_naming(e, "cut.mkv")


# ----------------------------------------------------------------------------- rotation


def _y_plane(frame) -> np.ndarray:
    return frame.to_ndarray(format="yuv420p")[: frame.height]


@pytest.mark.parametrize("kind", ["rot90.mp4", "rot180.mp4", "rot270.mp4", "rot90.mkv"])
def test_rotated_files_decode_upright(media, kind):
    deg = int(kind[3:].split(".")[0])
    k = deg // 90
    want_w, want_h = (H, W) if k % 2 else (W, H)
    info = decode.probe(media[kind])
    assert (info.width, info.height) == (want_w, want_h) and info.rotation == deg

    # Full resolution, both readers: exactly the unrotated clip's pixels turned (same bitstream).
    idx = [0, 60, 179]
    ref_bgr = decode.read_frames_bgr(media["mp4"], idx)
    got_bgr = decode.read_frames_bgr(media[kind], idx)
    pts = np.arange(N_FRAMES) / 18.0
    ref_rgb = decode.read_frames_rgb(media["mp4"], [100, 101], pts)
    got_rgb = decode.read_frames_rgb(media[kind], [100, 101], pts)  # the seeking path
    got_rgb0 = decode.read_frames_rgb(media[kind], [0, 3])  # the decode-from-start path
    for i in idx:
        assert got_bgr[i].shape == (want_h, want_w, 3) and got_bgr[i].flags["C_CONTIGUOUS"]
        assert np.array_equal(got_bgr[i], np.rot90(ref_bgr[i], k))
    for i in (100, 101):
        assert got_rgb[i].shape == (want_h, want_w, 3)
        assert np.array_equal(got_rgb[i], np.rot90(ref_rgb[i], k))
    assert got_rgb0[0].shape == (want_h, want_w, 3)

    # The turn is the one ffmpeg itself applies for this display matrix (not just self-consistent).
    outside = _ffmpeg_rgb(media[kind], want_w, want_h)
    assert np.abs(outside.astype(int) - got_rgb0[0]).mean() < 2.0

    # Analysis views: upright, sized from the upright frame, equal to the views of the turned pixels.
    a = decode.read_analysis(media[kind])
    gw, gh = decode.analysis_size(want_w, want_h)
    assert (a.width, a.height) == (want_w, want_h)
    assert a.gray.shape == (N_FRAMES, gh, gw) and a.small_rgb.shape == (N_FRAMES, 27, 48, 3)
    for df in decode.iter_frames(media["mp4"]):
        if df.index not in idx:
            continue
        y = np.rot90(_y_plane(df.frame), k)
        ref_gray = cv2.resize(np.ascontiguousarray(y), (gw, gh), interpolation=cv2.INTER_AREA)
        assert np.abs(ref_gray.astype(int) - a.gray[df.index]).mean() < 2.0
        rgb = np.ascontiguousarray(np.rot90(df.frame.to_ndarray(format="rgb24"), k))
        ref_small = cv2.resize(rgb, decode.SMALL_SIZE, interpolation=cv2.INTER_AREA)
        assert np.abs(ref_small.astype(int) - a.small_rgb[df.index]).mean() < 6.0

    # The pipeline's own calls (frame_index): FrameViews from VideoInfo, to_bgr and luma on raw frames.
    views = decode.FrameViews(info.width, info.height)
    df = next(iter(decode.iter_frames(media[kind])))
    gray, _ = views.views(df.frame)
    assert gray.shape == (gh, gw) and np.abs(gray.astype(int) - a.gray[0]).mean() < 1e-9
    assert np.array_equal(decode.to_bgr(df.frame), got_bgr[0])
    assert views.luma(df.frame, 2).shape == ((want_h + 1) // 2, (want_w + 1) // 2)


def test_unrotated_file_reports_no_rotation(media):
    assert decode.probe(media["mp4"]).rotation == 0


def test_bare_rotate_tag_is_reported(media):
    """A 'rotate' tag without a display matrix: ffmpeg and players ignore it, so the frames stay as
    coded, but VideoInfo says so and the caller can warn."""
    info = decode.probe(media["tag90.mkv"])
    assert (info.width, info.height) == (W, H) and info.rotation == 0 and info.rotation_tag == 90
